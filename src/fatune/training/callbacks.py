"""Trainer callbacks: ``metrics.jsonl``, the loss-curve PNG and a progress bar with loss, tokens/s and ETA.

All of them act on the main process only (``state.is_world_process_zero``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback


class MetricsLog(TrainerCallback):
    """Append one JSON row per log event to ``OUT/metrics.jsonl``: ``{"step", "loss", ...}`` for training
    and ``{"step", "eval_loss", ...}`` for evaluation."""

    def __init__(self, out: Path):
        self.path = Path(out) / "metrics.jsonl"

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
        if state.num_input_tokens_seen:
            row["tokens_seen"] = int(state.num_input_tokens_seen)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")


def read_metrics(out: Path) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(out: Path) -> Path | None:
    """Draw train and validation loss from ``metrics.jsonl`` into ``OUT/loss_curve.png``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    rows = read_metrics(out)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])]
    val = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not val:
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    if train:
        axes.plot(*zip(*train), label="train loss")
    if val:
        axes.plot(*zip(*val), marker="o", label="val loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(Path(out).name)
    axes.grid(alpha=0.3)
    axes.legend()
    path = Path(out) / "loss_curve.png"
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


class LossCurve(TrainerCallback):
    """Redraw ``loss_curve.png`` at every evaluation and at the end."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss_curve(self.out)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss_curve(self.out)


class Progress(TrainerCallback):
    """A tqdm bar over optimizer steps showing the latest loss, tokens/s and (tqdm's) ETA."""

    def __init__(self):
        self.bar = None
        self.started = self.tokens_at_start = None
        self.loss = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", dynamic_ncols=True)
            self.started, self.tokens_at_start = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        self.bar.update(state.global_step - self.bar.n)
        elapsed = time.perf_counter() - self.started
        tokens = state.num_input_tokens_seen - self.tokens_at_start
        postfix = {"tok/s": f"{tokens / elapsed:.0f}" if elapsed > 0 else "-"}
        if self.loss is not None:
            postfix["loss"] = f"{self.loss:.4f}"
        self.bar.set_postfix(postfix, refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            if "loss" in logs:
                self.loss = logs["loss"]
            if "eval_loss" in logs:
                self.bar.write(f"step {state.global_step}: eval_loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
