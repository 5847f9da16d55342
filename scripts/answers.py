#!/usr/bin/env python3
"""Greedy answers of a running sproutd to labelled prompts, to compare engines.

    scripts/answers.py dump URL OUT.jsonl [N] [FROM] [MAX_TOKENS] [DATASETS]
        # N (10) items from item FROM (0) of each of DATASETS (gsm8k,mmlu,nq)
        # at L0, greedy, MAX_TOKENS (256) new tokens, one at a time
    scripts/answers.py compare A.jsonl B.jsonl  # how many answers changed; accuracy of each

Used to check that a patched engine answers as the old one did (README,
"Benchmarks"). Prompts come from ../shared/data/prompts; scoring is the
directives benchmark's: GSM8K the last number, MMLU the first option letter
named, NQ a reference alias contained in the answer.
"""

import json
import re
import sys
import urllib.request
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "prompts"


def normalize(s: str) -> str:
    return " ".join("".join(c if c.isalnum() or c.isspace() else " " for c in s.lower()).split())


def last_number(s: str):
    nums = re.findall(r"-?\d+(?:\.\d+)?", s.replace(",", ""))
    return float(nums[-1]) if nums else None


def mmlu_letter(s: str):
    for i, c in enumerate(s):
        if c in "ABCD":
            prev = s[i - 1] if i > 0 else " "
            nxt = s[i + 1] if i + 1 < len(s) else " "
            if not prev.isalnum() and not nxt.isalnum():
                return c
    return None


def items(n: int, start: int = 0, datasets=("gsm8k", "mmlu", "nq")):
    def first(path):
        with open(DATA / path) as f:
            return [json.loads(line) for _, line in zip(range(start + n), f)][start:]

    for v in first("gsm8k/test.jsonl") if "gsm8k" in datasets else []:
        gold = float(v["answer"].rsplit("####", 1)[1].strip().replace(",", ""))
        yield "gsm8k", v["question"], lambda a, g=gold: (x := last_number(a)) is not None and abs(x - g) < 1e-6
    for v in first("mmlu/test_first35_per_subject.jsonl") if "mmlu" in datasets else []:
        prompt = v["question"] + "".join(f"\n({chr(65 + i)}): {c}" for i, c in enumerate(v["choices"]))
        yield "mmlu", prompt, lambda a, k=v["answer"][0]: mmlu_letter(a) == k
    for v in first("natural_questions/nq_open_dev_first2000.jsonl") if "nq" in datasets else []:
        golds = [normalize(a) for a in v["answer"]]
        yield "nq", v["question"], lambda a, gs=golds: any(g in normalize(a) for g in gs)


def dump(url: str, out: str, n: int, start: int, max_tokens: int, datasets) -> None:
    with open(out, "w") as f:
        for dataset, prompt, check in items(n, start, datasets):
            body = {"messages": [{"role": "user", "content": prompt}], "directive": "L0", "temperature": 0, "max_tokens": max_tokens}
            req = urllib.request.Request(
                f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=600) as r:
                resp = json.load(r)
            text = resp["choices"][0]["message"]["content"]
            row = {"dataset": dataset, "prompt": prompt, "text": text, "tokens": resp["usage"]["completion_tokens"], "correct": bool(check(text))}
            f.write(json.dumps(row) + "\n")
            print(f"{dataset}: {row['tokens']} tokens, correct {row['correct']}", flush=True)


def compare(a_path: str, b_path: str) -> None:
    a = [json.loads(line) for line in open(a_path)]
    b = [json.loads(line) for line in open(b_path)]
    assert [x["prompt"] for x in a] == [x["prompt"] for x in b], "not the same prompts"
    changed = [i for i, (x, y) in enumerate(zip(a, b)) if x["text"] != y["text"]]
    print(f"{len(changed)} of {len(a)} answers changed")
    for i in changed:
        common = next((k for k, (p, q) in enumerate(zip(a[i]["text"], b[i]["text"])) if p != q), min(len(a[i]["text"]), len(b[i]["text"])))
        print(f"  {a[i]['dataset']} #{i}: first difference at character {common} of {len(a[i]['text'])}")
    for name, rows in (("A", a), ("B", b)):
        per = {}
        for r in rows:
            per.setdefault(r["dataset"], []).append(r["correct"])
        acc = ", ".join(f"{d} {sum(v)}/{len(v)}" for d, v in per.items())
        print(f"{name}: accuracy {acc}; mean tokens {sum(r['tokens'] for r in rows) / len(rows):.1f}")


if __name__ == "__main__":
    if 4 <= len(sys.argv) <= 8 and sys.argv[1] == "dump":
        arg = lambda i, default: sys.argv[i] if len(sys.argv) > i else default
        dump(sys.argv[2], sys.argv[3], int(arg(4, 10)), int(arg(5, 0)), int(arg(6, 256)), arg(7, "gsm8k,mmlu,nq").split(","))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
