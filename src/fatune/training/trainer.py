"""``FatuneTrainer``: the HF ``Trainer`` with atomic ``step-N`` checkpoints and a NaN/inf guard.

Everything else (optimizers, schedulers, mixed precision, gradient accumulation and checkpointing,
DDP under torchrun/accelerate, resume with RNG state and data position) is the HF Trainer's own.
What it lacks, and is added here:

* Checkpoints are written into ``checkpoints/.tmp-step-N`` and renamed to ``step-N`` only when
  complete, so a run killed mid-save never leaves a half checkpoint that a resume would pick up
  (``integrity`` still checks one before a resume). They hold no tokenizer: the run keeps one copy in
  ``OUT/tokenizer`` (33 MB for Gemma, which every checkpoint repeated before).
* A save that fails (a full disk, above all) removes its ``.tmp-step-N`` and stops the run with one
  line naming the checkpoint the rerun will resume from; earlier checkpoints are untouched.
* A non-finite loss stops the run before the optimizer applies it, leaving the last good checkpoint.
* fp16 on CPU is real fp16 autocast with a gradient scaler (accelerate would silently run it as fp32), so
  a GPU config tried out on a CPU meets fp16 as on the GPU.
* With ``fused_head`` the loss comes from ``fatune.training.head`` (LM head only at trained positions,
  no full logits), in training and evaluation alike; the Trainer's token counting and loss scaling
  (``num_items_in_batch``, gradient accumulation, DDP) are unchanged.
"""

from __future__ import annotations

import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import unwrap_peft_model

from fatune.artifact import CHECKPOINTS_DIR, write_metadata
from fatune.errors import FatuneError
from fatune.fsutil import is_disk_full
from fatune.training import head
from fatune.training.rundir import FAULT_ENV, checkpoints, fault_point, rotate


class NonFiniteLoss(FatuneError):
    pass


class CheckpointSaveError(FatuneError):
    """A checkpoint could not be written (a full disk, a lost mount); earlier checkpoints are intact."""


@contextmanager
def _fault_points_after_torch_saves(step: int):
    """Tests only (``FATUNE_FAULT_AT`` set): a ``fault_point`` named after each file the HF Trainer's save
    helpers write with ``torch.save`` (``optimizer``, ``scheduler``, ``rng_state``, ...), so a kill can land
    between two of them. Without the variable nothing is patched."""
    if not os.environ.get(FAULT_ENV):
        yield
        return
    original = torch.save

    def save(obj, f, *args, **kwargs):
        original(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):
            fault_point(Path(f).name.split(".")[0], step, Path(f))

    torch.save = save
    try:
        yield
    finally:
        torch.save = original


class FatuneTrainer(Trainer):
    def __init__(self, *args, run_dir: Path, keep_checkpoints: int | None, fused_head: bool = True,
                 checkpoint_meta: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_dir = Path(run_dir)
        # fatune.json in every checkpoint, so that `fatune eval RUN/checkpoints/step-N` works (learning curves)
        self.checkpoint_meta = checkpoint_meta
        self.keep_checkpoints = keep_checkpoints
        self.fused_head = fused_head and head.install(unwrap_peft_model(self.model))

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if self.args.fp16 and self.accelerator.device.type == "cpu":
            # accelerate (1.15) silently trains fp16 on CPU as plain fp32: no autocast, no loss scaling. A GPU
            # config tried out on a CPU should meet fp16 as it is: fp16 autocast and a gradient scaler.
            self.accelerator.native_amp = True
            self.accelerator.scaler = torch.amp.GradScaler("cpu")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.fused_head:
            inputs = {**inputs, "fused_head_loss": True}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = loss.detach().float().item()
        if not math.isfinite(value):
            last = checkpoints(self.run_dir)
            kept = f"; the last good checkpoint is {last[-1][1]}" if last else "; no checkpoint was written yet"
            raise NonFiniteLoss(f"the training loss became {value} at step {self.state.global_step + 1}{kept}. "
                                "Lower train.learning_rate, use train.precision: fp32 or bf16 instead of fp16, "
                                "or check the data")
        return loss

    def _save_checkpoint(self, model, trial) -> None:
        """Save like the HF Trainer does (model, optimizer, scheduler, scaler, RNG, trainer state), but
        into a temporary directory that is renamed to ``step-N`` once everything is on disk.

        Fault points (``rundir.fault_point``), in order: ``begin`` (empty temporary dir), ``training_args``
        (written after the weights), ``model`` (``save_model`` done), ``optimizer``, ``scheduler``,
        ``scaler`` (fp16 only), ``rng_state``, ``trainer_state``, ``fatune_json``, ``renamed`` (``step-N``
        in place, older ones not yet rotated), then per rotated checkpoint ``rotate-renamed`` and ``rotated``."""
        step = self.state.global_step
        root = self.run_dir / CHECKPOINTS_DIR
        final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
        try:
            self._write_checkpoint(tmp, step)
        except BaseException as error:
            full = isinstance(error, Exception) and disk_full(error, root)  # before the cleanup frees space
            if self.args.should_save:
                shutil.rmtree(tmp, ignore_errors=True)
            if full or isinstance(error, OSError):
                raise CheckpointSaveError(_save_failed(error, full, final, root)) from None
            raise
        if self.args.should_save:
            if final.exists():  # the same step saved again (Ctrl-C right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            fault_point("renamed", step, final)
            rotate(self.run_dir, self.keep_checkpoints, step)
        self.accelerator.wait_for_everyone()

    def _write_checkpoint(self, tmp: Path, step: int) -> None:
        if self.args.should_save:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            fault_point("begin", step, tmp)
        self.accelerator.wait_for_everyone()
        self.store_flos()
        # No tokenizer in checkpoints: the run saved it once (OUT/tokenizer), and generation looks there.
        processing_class, self.processing_class = self.processing_class, None
        try:
            with _fault_points_after_torch_saves(step):
                self.save_model(str(tmp), _internal_call=True)
                if self.args.should_save:
                    weights = next((f for f in sorted(tmp.glob("*.safetensors"))), None)
                    fault_point("model", step, weights)
                if not self.args.save_only_model:
                    self._save_optimizer_and_scheduler(str(tmp))
                    self._save_scaler(str(tmp))
                    self._save_rng_state(str(tmp))  # every rank writes its own RNG file
        finally:
            self.processing_class = processing_class
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self.state.save_to_json(str(tmp / TRAINER_STATE_NAME))
            fault_point("trainer_state", step, tmp / TRAINER_STATE_NAME)
            if self.checkpoint_meta is not None:
                fault_point("fatune_json", step, write_metadata(tmp, self.checkpoint_meta))


def disk_full(error: BaseException, root: Path) -> bool:
    """Whether a failed save ran out of disk. ``fsutil.is_disk_full`` reads what the error says (ENOSPC,
    EDQUOT, safetensors' StorageFull), but torch.save reports a full disk as ``RuntimeError: ... file write
    failed``, so a nearly full file system (under 16 MiB free, measured before the partial save is
    removed) counts too."""
    if is_disk_full(error):
        return True
    try:
        return shutil.disk_usage(root).free < 16 * 2**20
    except OSError:
        return False


def _save_failed(error: BaseException, full: bool, final: Path, root: Path) -> str:
    """One line for a failed save: what, where, and which step the rerun will resume from."""
    done = [step for step, _ in checkpoints(root.parent)]
    resume = (f"resume from step-{done[-1]}" if done
              else "start again (no checkpoint was saved before this one)")
    if full:
        return f"no space left on device while saving checkpoint {final.name} to {final}; " \
               f"free space and rerun the same command to {resume}"
    reason = getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]
    where = f": {error.filename}" if getattr(error, "filename", None) else ""
    return (f"could not save checkpoint {final.name} to {final} ({reason}{where}); "
            f"fix that and rerun the same command to {resume}")
