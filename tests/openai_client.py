"""The official OpenAI Python client against sproutd: models, a chat
completion and a streamed one, an agent's tool loop (streamed too),
structured output parsed into a pydantic model, and logprobs.
Usage: openai_client.py BASE_URL (…/v1)."""
import json
import sys

from openai import OpenAI
from pydantic import BaseModel

client = OpenAI(base_url=sys.argv[1], api_key="unused")

models = client.models.list()
ids = [m.id for m in models.data]
assert ids == ["qwen2.5-coder-0.5b-instruct"], ids
print("models ok", ids)

resp = client.chat.completions.create(
    model=ids[0],
    messages=[{"role": "user", "content": "What is 2 + 2?"}],
    max_tokens=16,
    seed=5,
    extra_body={"directive": "L2"},
)
text = resp.choices[0].message.content
assert text and resp.usage.completion_tokens > 0, resp
sprout = resp.usage.model_extra["sprout"]
assert sprout["directive"] == "L2" and sprout["estimated"] is True, sprout
print("chat ok", repr(text), resp.usage.completion_tokens, sprout["carbon_g"])

stream = client.chat.completions.create(
    model=ids[0],
    messages=[{"role": "user", "content": "Say hello."}],
    max_tokens=12,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage is not None:
        usage = chunk.usage
assert "".join(pieces).strip(), pieces
assert usage is not None and usage.completion_tokens > 0, usage
print("stream ok", repr("".join(pieces)), usage.completion_tokens)

# An agent's loop: a forced call, its result sent back, then a plain answer.
tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
msgs = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
r = client.chat.completions.create(model=ids[0], messages=msgs, tools=tools, tool_choice="required", temperature=0, max_tokens=64)
choice = r.choices[0]
assert choice.finish_reason == "tool_calls", choice
call = choice.message.tool_calls[0]
assert call.type == "function" and call.function.name == "get_weather", call
args = json.loads(call.function.arguments)
assert isinstance(args.get("city"), str), args
msgs += [choice.message, {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 17, "sky": "rain"})}]
# Tools still listed, as agents send them; "none" asks for the answer now
# (a small model may otherwise call the tool again).
r = client.chat.completions.create(model=ids[0], messages=msgs, tools=tools, tool_choice="none", temperature=0, max_tokens=60)
answer = r.choices[0].message.content
assert answer and not r.choices[0].message.tool_calls, r
print("tools ok", args, repr(answer))

# The same call streamed: OpenAI's tool_calls deltas, joined by index.
stream = client.chat.completions.create(
    model=ids[0],
    messages=msgs[:1],
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    temperature=0,
    max_tokens=64,
    stream=True,
)
calls, finish = {}, None
for chunk in stream:
    c = chunk.choices[0]
    for d in c.delta.tool_calls or []:
        acc = calls.setdefault(d.index, {"name": "", "arguments": ""})
        acc["name"] += d.function.name or ""
        acc["arguments"] += d.function.arguments or ""
    finish = c.finish_reason or finish
assert finish == "tool_calls" and calls[0]["name"] == "get_weather", (finish, calls)
assert isinstance(json.loads(calls[0]["arguments"])["city"], str), calls
# ... and the round trip's answer streamed too.
stream = client.chat.completions.create(
    model=ids[0], messages=msgs, tools=tools, tool_choice="none", temperature=0, max_tokens=60, stream=True
)
streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
assert streamed == answer, (streamed, answer)
print("stream tools ok", calls)


class Person(BaseModel):
    name: str
    age: int


p = client.chat.completions.parse(
    model=ids[0],
    messages=[{"role": "user", "content": "Invent a person: a name and an age."}],
    response_format=Person,
    temperature=0,
    max_tokens=60,
)
person = p.choices[0].message.parsed
assert isinstance(person, Person) and p.choices[0].finish_reason == "stop", p
print("structured ok", person)

r = client.chat.completions.create(
    model=ids[0],
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    temperature=0,
    max_tokens=8,
    logprobs=True,
    top_logprobs=3,
)
lp = r.choices[0].logprobs.content
assert "".join(t.token for t in lp) == r.choices[0].message.content, (lp, r.choices[0].message.content)
for t in lp:
    # Greedy: every token is the most likely one, and the alternatives descend.
    assert t.logprob <= 0 and len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token, t
    assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6, t
    assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob, t
print("logprobs ok", len(lp))
