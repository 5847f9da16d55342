"""llama.cpp in-process (llama-cpp-python), driven by benches/throughput.rs.

Loads the GGUF once, then for each line on stdin (a JSON chat request:
{"prompt", "max_tokens"}) generates greedily and prints one JSON line with
llama.cpp's own prefill and decode timings (llama_perf_context) and the wall
time. Run with LLAMA_CPP_LIB_PATH pointing at scripts/build-llamacpp.sh's
library.
"""

import json
import sys
import time

import llama_cpp


def main() -> None:
    model, threads = sys.argv[1], int(sys.argv[2])
    llm = llama_cpp.Llama(
        model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=4096, verbose=False
    )
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        llm.reset()  # no reuse of the previous prompt's KV cache
        llama_cpp.llama_perf_context_reset(llm.ctx)
        t0 = time.perf_counter()
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": req["prompt"]}],
            max_tokens=req["max_tokens"],
            temperature=0.0,
            repeat_penalty=1.0,
        )
        wall = time.perf_counter() - t0
        perf = llama_cpp.llama_perf_context(llm.ctx)
        print(
            json.dumps(
                {
                    "prompt_tokens": out["usage"]["prompt_tokens"],
                    "completion_tokens": out["usage"]["completion_tokens"],
                    "prefill_s": perf.t_p_eval_ms / 1000.0,
                    "prefill_n": perf.n_p_eval,
                    "decode_s": perf.t_eval_ms / 1000.0,
                    "decode_n": perf.n_eval,
                    "wall_s": wall,
                    "text": out["choices"][0]["message"]["content"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
