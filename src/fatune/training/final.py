"""What a finished run leaves: ``OUT/final`` (the artifact) and ``OUT/train_summary.json``.

``fatune.artifact`` owns the artifact's layout and writes it atomically; this module decides what goes
in it, which takes the training config and the method: ``run_meta`` (the ``fatune.json`` content, in
``final/`` and in every checkpoint), ``save_final`` (each method's weights as ``final/`` holds them:
embed_head's trained rows merged back, a PEFT adapter for ptuning, lora and qlora, a full HF model for
embed_head and full; the tokenizer with the run's chat template as its Jinja ``chat_template``), and
``write_summary``.
"""

from __future__ import annotations

import json
from pathlib import Path

from fatune import __version__
from fatune.artifact import write_final
from fatune.environment import peak_memory_bytes, versions
from fatune.training.rundir import SUMMARY


def run_meta(config, precision: str, template: str) -> dict:
    """``fatune.json``: what generation needs to load the run's weights as trained (base model, method
    and its settings, template, normalization, precision)."""
    from fatune.models import resolve_model

    return {"fatune_version": __version__, "method": config.method.name, "base_model": config.model.path,
            "base_model_path": resolve_model(config.model.path), "tokenizer": config.model.tokenizer,
            "template": template,
            "normalize": config.data.normalize, "digits": config.data.digits,
            "load_in_4bit": config.method.load_in_4bit, "precision": precision,
            "method_config": config.method.model_dump(mode="json")}  # reload a 4-bit base exactly as trained


def checkpoint_loads_as_final(config) -> bool:
    """Whether a checkpoint's saved weights are what ``final/`` would hold. Not for embed_head on a subset
    of rows: its checkpoints keep the trained rows apart, and only ``save_final`` merges them."""
    return not (config.method.name == "embed_head" and config.method.rows != "all")


def save_final(model, method, tokenizer, template, config, final: Path, precision: str) -> Path:
    """Write the artifact atomically (built in a temporary dir, then renamed to ``final``). ``precision``:
    what the run trained in (``train.precision`` as resolved), so generation computes as training did."""
    model = method.merge(model) if hasattr(method, "merge") else model
    base_config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    base_config.use_cache = True  # training turned it off; generation wants it
    tokenizer.chat_template = template.jinja
    return write_final(final, model.save_pretrained, tokenizer, run_meta(config, precision, template.name))


def write_summary(out: Path, config, trainer, output, report: dict, prepared, final_eval, seconds: float,
                  settings) -> dict:
    state = trainer.state
    losses = [row["loss"] for row in state.log_history if "loss" in row]
    train_seconds = output.metrics.get("train_runtime", seconds)
    summary = {
        "method": config.method.name, "base_model": config.model.path,
        "trainable_params": report["trainable_params"], "total_params": report["total_params"],
        "train_seconds": round(train_seconds, 2), "wall_seconds": round(seconds, 2), "steps": state.global_step,
        "tokens_seen": int(state.num_input_tokens_seen),
        "tokens_per_second": round(state.num_input_tokens_seen / train_seconds, 1) if train_seconds else None,
        "peak_memory_bytes": peak_memory_bytes(),
        "final_train_loss": losses[-1] if losses else output.training_loss,
        "final_eval_loss": final_eval,
        "train_examples": prepared.report["train"]["conversations"], "train_rows": len(prepared.train),
        "val_examples": prepared.report["val"]["conversations"],
        "world_size": trainer.args.world_size, "device": settings.device, "precision": settings.precision,
        "optimizer": settings.optimizer, "versions": versions(),
        **{k: v for k, v in report.items() if k not in ("trainable_params", "total_params")},
    }
    (Path(out) / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary
