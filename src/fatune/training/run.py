"""``fatune.train(config)``: load, apply the method, prepare data, train with the HF Trainer, save.

This is the only place that wires data, model, method and trainer together; the CLI's ``train`` verb
calls it. See ``rundir`` for the run directory and ``trainer`` for what is added to the HF Trainer.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import yaml

from fatune.artifact import final_path, save_run_tokenizer
from fatune.errors import FatuneError
from fatune.training import precision as precision_rules
from fatune.training.callbacks import LossCurve, MetricsLog, Progress, read_metrics
from fatune.training.collator import RowCollator
from fatune.training.final import checkpoint_loads_as_final, run_meta, save_final, write_summary
from fatune.training.integrity import usable_checkpoint
from fatune.training.rundir import (
    RunLock,
    clear_run,
    is_finished,
    latest_checkpoint,
    remove_partial_saves,
    truncate_metrics,
)
from fatune.training.trainer import FatuneTrainer

log = logging.getLogger(__name__)
# Differences in these sections make an unfinished run a different experiment: refuse to resume it.
_RESUME_SECTIONS = ("model", "data", "method")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _check_run_dir(out: Path, config, overwrite: bool, precision: str) -> None:
    """Refuse to touch a finished run (unless ``overwrite``) or to resume a different experiment; write
    the config with ``train.precision`` as resolved (``auto`` is decided once per run)."""
    saved = out / "config.yaml"
    if overwrite:
        clear_run(out)
    elif is_finished(out):
        raise FatuneError(f"{out} holds a finished run; pass --overwrite to replace it or choose another output.dir")
    elif saved.exists() and latest_checkpoint(out) is not None:
        before = yaml.safe_load(saved.read_text()) or {}
        now = config.model_dump(mode="json")
        changed = [f"{section}.{key}" for section in _RESUME_SECTIONS
                   for key in now[section] if before.get(section, {}).get(key) != now[section][key]]
        if changed:
            raise FatuneError(f"{out} holds an unfinished run with a different config ({', '.join(changed)}); "
                              "rerun with the same settings to resume, pass --overwrite, or choose another output.dir")
    resolved = config.model_dump(mode="json")
    resolved["train"]["precision"] = precision
    saved.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))


def _recorded_precision(out: Path, overwrite: bool = False) -> str | None:
    """The precision an unfinished run resolved when it started (its ``config.yaml``), so that resuming it
    keeps that decision; None for a new run."""
    import torch

    saved = Path(out) / "config.yaml"
    if overwrite or not saved.exists() or is_finished(out) or latest_checkpoint(out) is None:
        return None
    precision = ((yaml.safe_load(saved.read_text()) or {}).get("train") or {}).get("precision")
    if precision == "auto":  # written by a fatune that did not record the decision: its auto was fp32 on CPU
        return None if torch.cuda.is_available() else "fp32"
    return precision if precision in precision_rules.PRECISIONS else None


def layout_for(config) -> str:
    """How batches are laid out (see ``collator``): P-Tuning needs an attention mask."""
    if config.method.name == "ptuning":
        return "masked"
    return "flat" if config.train.padding_free else "padded"


def _load_base(config, model_type: str, dtype):
    from fatune.methods.qlora import quantization_config
    from fatune.models import load_model

    quantization = quantization_config(config.method) if config.method.load_in_4bit else None
    return load_model(config.model.path, dtype=dtype, attn_implementation=config.model.attn_implementation,
                      quantization_config=quantization, padding_free=layout_for(config) == "flat")


def _precision(config, out: Path, model_type: str, overwrite: bool):
    """This run's ``Settings`` and ``TrainingArguments``: decided once (a resumed run keeps the recorded
    decision) and, under DDP, rank 0's decision on every rank."""
    train_cfg, method = config.train, config.method.name
    has_eval = config.data.val_ratio > 0
    settings = precision_rules.resolve_precision(train_cfg, model_type, method, _recorded_precision(out, overwrite))
    args = precision_rules.training_arguments(config, out, settings, has_eval=has_eval)
    if settings.device == "cpu" and args.world_size > 1:  # world_size sets up the process group agree uses
        agreed = precision_rules.agree(settings)
        if agreed != settings:
            settings, args = agreed, precision_rules.training_arguments(config, out, agreed, has_eval=has_eval)
    if train_cfg.precision == "auto" and _is_main_process():
        log.warning("train.precision auto -> %s: %s", settings.precision, settings.reason)
    return settings, args


@dataclass
class TrainResult:
    """What ``train`` returns: the run directory, the trained model (in memory) and the summary."""

    out: Path
    model: object
    summary: dict | None


def train(config, overwrite: bool = False) -> TrainResult:
    """Train ``config`` (a ``fatune.config.Config``) into ``config.output.dir``."""
    from transformers import set_seed
    from transformers.trainer_utils import IntervalStrategy

    from fatune.data.prepare import prepare
    from fatune.data.templates import get_template
    from fatune.methods import get_method
    from fatune.models import load_model_config, load_tokenizer

    out = Path(config.output.dir)
    started = time.perf_counter()
    with RunLock(out) if _is_main_process() else nullcontext():
        tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model_type = load_model_config(config.model.path).model_type
        settings, args = _precision(config, out, model_type, overwrite)
        with args.main_process_first(desc="prepare the run dir and the data"):
            if _is_main_process():
                _check_run_dir(out, config, overwrite, settings.precision)
                # What a killed save or rotation left is never loaded; a damaged checkpoint is set aside
                # here (with a warning), so the HF Trainer only ever sees a whole one.
                remove_partial_saves(out)
                usable_checkpoint(out, need_meta=checkpoint_loads_as_final(config))
            prepared = prepare(config, tokenizer)
        resume = latest_checkpoint(out)  # every rank: after the main process set damaged ones aside
        if _is_main_process():
            save_run_tokenizer(tokenizer, out, keep_existing=resume is not None)
        if len(prepared.val) == 0:  # e.g. val_ratio > 0 on a single conversation: nothing to evaluate
            args.eval_strategy = IntervalStrategy.NO
        set_seed(config.train.seed)  # LoRA and prompt-encoder initialization happen before the Trainer seeds
        method = get_method(config.method.name)
        model = method.apply(_load_base(config, model_type, settings.model_dtype), config.method, tokenizer=tokenizer)
        precision_rules.upcast_trainable(model)  # mixed precision: what trains stays fp32 over a bf16 base
        model.config.use_cache = False  # a KV cache would let packed conversations attend to each other
        report = method.report(model)
        log.warning("%s: %s trainable of %s parameters", config.method.name, f"{report['trainable_params']:,}",
                    f"{report['total_params']:,}")
        val = prepared.val
        if config.eval.max_rows is not None and len(val) > config.eval.max_rows:
            val = val.select(range(config.eval.max_rows))
        template = get_template(config.model.template, tokenizer)
        meta = run_meta(config, settings.precision, template.name) if checkpoint_loads_as_final(config) else None
        trainer = FatuneTrainer(
            model=model, args=args, train_dataset=prepared.train, eval_dataset=val if len(val) else None,
            data_collator=RowCollator(tokenizer.pad_token_id, layout=layout_for(config)),
            processing_class=tokenizer, callbacks=[MetricsLog(out), LossCurve(out), *_tensorboard(out)],
            run_dir=out, keep_checkpoints=config.train.save_total_limit, fused_head=config.train.fused_head,
            checkpoint_meta=meta)
        _use_own_progress_bar(trainer)
        step = int(resume.name.split("-")[1]) if resume is not None else 0
        if _is_main_process():
            truncate_metrics(out, step)  # also the rows of a run killed before its first checkpoint
            if resume is not None:
                print(f"fatune: resuming from step {step} ({resume})", flush=True)
        try:
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except FatuneError:  # a failed save, a non-finite loss: the CLI's error line starts a line of its own
            _close_progress_bar(trainer)
            raise
        except KeyboardInterrupt:
            trainer._save_checkpoint(trainer.model, None)
            print(f"\nfatune: interrupted; saved checkpoint step-{trainer.state.global_step}. Run the same command "
                  "to resume.", flush=True)
            raise
        final_eval = None
        if trainer.eval_dataset is not None:
            logged = [r for r in read_metrics(out) if "eval_loss" in r and r["step"] == trainer.state.global_step]
            final_eval = logged[-1]["eval_loss"] if logged else trainer.evaluate()["eval_loss"]
        summary = None
        if trainer.args.should_save:
            save_final(trainer.model, method, tokenizer, template, config, final_path(out), settings.precision)
            summary = write_summary(out, config, trainer, output, report, prepared, final_eval,
                                    time.perf_counter() - started, settings)
        trainer.accelerator.wait_for_everyone()
    return TrainResult(out, trainer.model, summary)


def _tensorboard(out: Path) -> list:
    """TensorBoard logs in ``OUT/tensorboard`` (transformers' own callback, with our directory), main process only."""
    if not _is_main_process():
        return []
    from transformers.integrations import TensorBoardCallback

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl and the PNG still record everything
        log.warning("tensorboard is not installed; logging to metrics.jsonl only (pip install tensorboard)")
        return []
    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "tensorboard")))]


def _close_progress_bar(trainer) -> None:
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, Progress) and callback.bar is not None:
            callback.bar.close()
            callback.bar = None


def _use_own_progress_bar(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Progress())
