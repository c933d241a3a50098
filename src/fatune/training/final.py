"""What a finished run leaves: ``OUT/final`` (the artifact) and ``OUT/train_summary.json``.

``final/`` loads without fatune: a PEFT adapter (``PeftModel.from_pretrained(base, final)``) for
ptuning, lora and qlora, a full HF model for embed_head and full. It also holds the tokenizer with
the run's chat template as its Jinja ``chat_template``, and ``fatune.json`` (base model, method,
template, normalization, precision) so fatune can chat with it exactly as it was trained.

Checkpoints hold no tokenizer: ``save_run_tokenizer`` writes ``OUT/tokenizer`` once per run, and
``generation.loading.tokenizer_dir`` finds it for ``RUN/checkpoints/step-N``. ``final/`` keeps its own
copy, since export and serving rely on it alone.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
from pathlib import Path

from fatune import __version__
from fatune.errors import FatuneError
from fatune.fsutil import publish_dir
from fatune.generation.loading import FATUNE_JSON
from fatune.training.rundir import SUMMARY


def run_meta(config, precision: str, template: str) -> dict:
    """``fatune.json``: what generation needs to load the run's weights as trained (base model, method
    and its settings, template, normalization, precision)."""
    from fatune.models import resolve

    return {"fatune_version": __version__, "method": config.method.name, "base_model": config.model.path,
            "base_model_path": resolve(config.model.path), "tokenizer": config.model.tokenizer,
            "template": template,
            "normalize": config.data.normalize, "digits": config.data.digits,
            "load_in_4bit": config.method.load_in_4bit, "precision": precision,
            "method_config": config.method.model_dump(mode="json")}  # reload a 4-bit base exactly as trained


def checkpoint_loads_as_final(config) -> bool:
    """Whether a checkpoint's saved weights are what ``final/`` would hold. Not for embed_head on a subset
    of rows: its checkpoints keep the trained rows apart, and only ``save_final`` merges them."""
    return not (config.method.name == "embed_head" and config.method.rows != "all")


def save_run_tokenizer(tokenizer, out: Path, keep_existing: bool = False) -> Path:
    """``OUT/tokenizer``: the run's tokenizer, once (not in each checkpoint), written atomically. A resumed
    run keeps the copy its start wrote (``keep_existing``); a new run replaces whatever an earlier,
    possibly different, experiment left."""
    target = Path(out) / "tokenizer"
    if keep_existing and (target / "tokenizer_config.json").exists():
        return target
    try:
        return publish_dir(tokenizer.save_pretrained, target, replace=True)
    except OSError as error:
        raise FatuneError(f"could not write the run's tokenizer to {target} ({error.strerror or error}); "
                          "free space or fix the output dir and rerun the same command") from None


def save_final(model, method, tokenizer, template, config, final: Path, precision: str) -> Path:
    """Write the artifact atomically (built in a temporary dir, then renamed to ``final``). ``precision``:
    what the run trained in (``train.precision`` as resolved), so generation computes as training did."""
    model = method.merge(model) if hasattr(method, "merge") else model
    base_config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    base_config.use_cache = True  # training turned it off; generation wants it
    tokenizer.chat_template = template.jinja
    meta = run_meta(config, precision, template.name)

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / FATUNE_JSON).write_text(json.dumps(meta, indent=2, ensure_ascii=False))

    return publish_dir(build, final, replace=True)


def peak_memory_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def versions() -> dict:
    import peft
    import torch
    import transformers

    found = {"fatune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
             "peft": peft.__version__, "python": platform.python_version()}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent)
        if commit.returncode == 0:
            found["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return found


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
