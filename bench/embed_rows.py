"""Benchmark: embed_head with rows=persian vs rows=all on Gemma 3 270M, in one invocation.

Trains a few steps of each on the bundled sample (same data, same seed, fp32, CPU) in separate child
processes, so each gets its own peak-memory figure, and reports trainable parameters, AdamW state size,
peak RSS and seconds per step side by side.

    python bench/embed_rows.py --steps 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(rows: str, steps: int, out: Path) -> dict:
    overrides = [f"method.rows={rows}", f"train.max_steps={steps}", f"train.save_steps={steps}",
                 f"train.eval_steps={steps}", "data.max_length=256", "eval.max_rows=2", f"output.dir={out}"]
    subprocess.run([sys.executable, "-m", "fatune", "train", str(ROOT / "configs/demo/embed_head.yaml"), *overrides],
                   check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "train_summary.json").read_text())
    return {"rows": rows, "trainable_params": summary["trainable_params"],
            "adamw_state_bytes": 2 * 4 * summary["trainable_params"],  # exp_avg + exp_avg_sq, fp32
            "peak_rss_bytes": summary["peak_memory_bytes"],
            "seconds_per_step": round(summary["train_seconds"] / summary["steps"], 2),
            "final_train_loss": summary["final_train_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fatune-embed-rows-") as tmp:
        results = [run(rows, args.steps, Path(tmp) / rows) for rows in ("all", "persian")]
    everything, persian = results
    report = {"model": "pypi:gemma-3-270m", "steps": args.steps, "runs": results,
              "trainable_ratio": round(persian["trainable_params"] / everything["trainable_params"], 4),
              "peak_rss_saved_bytes": everything["peak_rss_bytes"] - persian["peak_rss_bytes"]}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
