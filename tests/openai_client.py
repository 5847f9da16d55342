"""The official OpenAI Python client against sproutd: models, a chat
completion and a streamed one. Usage: openai_client.py BASE_URL (…/v1)."""
import sys

from openai import OpenAI

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
