"""``fatune bench embed``: embed_head with ``rows=persian`` vs ``rows=all``, in one invocation.

Trains a few steps of each on the bundled sample (same data, same seed, fp32; the settings of
``configs/demo/embed_head.yaml`` with ``data.max_length=256``) in separate child processes, so each
gets its own peak-memory figure (the child's peak RSS, read by the parent with ``wait4``), and reports
trainable parameters, AdamW state size, peak RSS and seconds per step side by side.

    fatune bench embed --steps 3 --out embed.json

Each child is ``python -m fatune.bench.embed_rows --rows ROWS --steps N --out-dir DIR``: one
training run whose ``train_summary.json`` the parent reads. It needs nothing but the installed package.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from fatune.bench.common import (
    command_line,
    environment,
    format_table,
    gb,
    log_tail,
    positive,
    run_child,
    write_report,
)
from fatune.errors import FatuneError

DEFAULT_MODEL = "pypi:gemma-3-270m"
ROWS = ("all", "persian")


def train_overrides(rows: str, steps: int, out: Path, model: str = DEFAULT_MODEL, max_length: int = 256) -> list[str]:
    """``configs/demo/embed_head.yaml`` as overrides (the bench must not need a repo checkout), shortened."""
    return [f"model.path={model}", "model.template=gemma", "data.path=fatune:sample", f"data.max_length={max_length}",
            "method.name=embed_head", f"method.rows={rows}", f"train.max_steps={steps}", "train.batch_size=1",
            "train.grad_accum=1", "train.learning_rate=2e-4", "train.precision=fp32", f"train.save_steps={steps}",
            f"train.eval_steps={steps}", "train.logging_steps=1", "eval.max_rows=2", f"output.dir={out}"]


def run_one(rows: str, steps: int, out: Path, model: str = DEFAULT_MODEL, max_length: int = 256) -> dict:
    """Train one embed_head run in a child process; its figures, with the child's own peak RSS."""
    log = out.parent / f"{out.name}.log"
    child = run_child([sys.executable, "-m", "fatune.bench.embed_rows", "--rows", rows, "--steps", str(steps),
                       "--model", model, "--max-length", str(max_length), "--out-dir", str(out)], log=log)
    if child.returncode != 0:
        raise FatuneError(f"the rows={rows} training child failed (exit {child.returncode}):\n{log_tail(log)}")
    summary = json.loads((out / "train_summary.json").read_text())
    result = {"rows": rows, "trainable_params": summary["trainable_params"], "total_params": summary["total_params"],
              "adamw_state_bytes": 2 * 4 * summary["trainable_params"],  # exp_avg + exp_avg_sq, fp32
              "peak_rss_bytes": child.peak_rss_bytes,
              "seconds_per_step": round(summary["train_seconds"] / max(summary["steps"], 1), 2),
              "steps": summary["steps"], "child_seconds": round(child.seconds, 1),
              "final_train_loss": summary.get("final_train_loss")}
    if summary.get("device", "cpu") != "cpu":
        result["peak_device_bytes"] = summary.get("peak_memory_bytes")
    return result


def bench_embed(steps: int = 3, model: str = DEFAULT_MODEL, max_length: int = 256, out: str | Path | None = None,
                command: str | None = None) -> dict:
    """Run both children, print the table, write the JSON report to ``out``; return the report."""
    positive(steps, "--steps")
    positive(max_length, "--max-length")
    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
        raise FatuneError(f"{model}: no such model directory")
    with tempfile.TemporaryDirectory(prefix="fatune-bench-embed-") as tmp:
        results = [run_one(rows, steps, Path(tmp) / rows, model, max_length) for rows in ROWS]
    everything, persian = results
    report = {"bench": "embed", "command": command or command_line(), **environment(), "model": model,
              "steps": steps, "max_length": max_length, "runs": results,
              "trainable_ratio": round(persian["trainable_params"] / everything["trainable_params"], 4),
              "peak_rss_saved_bytes": everything["peak_rss_bytes"] - persian["peak_rss_bytes"]}
    print(format_report(report))
    write_report(report, out)
    return report


def format_report(report: dict) -> str:
    rows = [[r["rows"], r["trainable_params"], gb(r["adamw_state_bytes"]), gb(r["peak_rss_bytes"]),
             r["seconds_per_step"], r["final_train_loss"]] for r in report["runs"]]
    return "\n".join([
        f"fatune bench embed: embed_head on {report['model']}, {report['steps']} step(s) per run, rows of "
        f"{report['max_length']} tokens, fp32, each run in its own process", "",
        format_table(["rows", "trainable params", "AdamW state GB", "peak RSS GB", "s/step", "train loss"], rows), "",
        f"rows=persian trains {report['trainable_ratio']:.1%} of the parameters; its peak RSS is "
        f"{gb(abs(report['peak_rss_saved_bytes']))} GB {'lower' if report['peak_rss_saved_bytes'] >= 0 else 'higher'}",
        f"machine: {report['machine']}; torch {report['torch']}, transformers {report['transformers']}"])


def child_main(argv: Sequence[str] | None = None) -> int:
    """One training run (the child of ``fatune bench embed``)."""
    parser = argparse.ArgumentParser(prog="python -m fatune.bench.embed_rows",
                                     description="one embed_head training run for fatune bench embed")
    parser.add_argument("--rows", required=True, help="all | persian | a file of token ids")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--out-dir", required=True, help="the run dir (train_summary.json lands here)")
    args = parser.parse_args(argv)
    from fatune.config import load_config
    from fatune.console import quiet_progress_bars, setup_logging
    from fatune.training import train

    setup_logging()
    quiet_progress_bars()
    try:
        config = load_config(None, train_overrides(args.rows, args.steps, Path(args.out_dir), args.model,
                                                   args.max_length))
        train(config, overwrite=True)
    except FatuneError as error:
        print(f"fatune: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(child_main())
