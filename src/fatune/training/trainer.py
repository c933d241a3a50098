"""``FatuneTrainer``: the HF ``Trainer`` with atomic ``step-N`` checkpoints and a NaN/inf guard.

Everything else (optimizers, schedulers, mixed precision, gradient accumulation and checkpointing,
DDP under torchrun/accelerate, resume with RNG state and data position) is the HF Trainer's own.
What it lacks, and is added here:

* Checkpoints are written into ``checkpoints/.tmp-step-N`` and renamed to ``step-N`` only when
  complete, so a run killed mid-save never leaves a half checkpoint that a resume would pick up.
* A non-finite loss stops the run before the optimizer applies it, leaving the last good checkpoint.
* fp16 on CPU is real fp16 autocast with a gradient scaler (accelerate would silently run it as fp32), so
  a GPU config tried out on a CPU meets fp16 as on the GPU.
* With ``fused_head`` the loss comes from ``fatune.training.head`` (LM head only at trained positions,
  no full logits), in training and evaluation alike; the Trainer's token counting and loss scaling
  (``num_items_in_batch``, gradient accumulation, DDP) are unchanged.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import unwrap_peft_model

from fatune.errors import FatuneError
from fatune.training import head
from fatune.training.final import FATUNE_JSON
from fatune.training.rundir import rotate


class NonFiniteLoss(FatuneError):
    pass


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
            last = sorted((self.run_dir / "checkpoints").glob("step-*"))
            kept = f"; the last good checkpoint is {last[-1]}" if last else "; no checkpoint was written yet"
            raise NonFiniteLoss(f"the training loss became {value} at step {self.state.global_step + 1}{kept}. "
                                "Lower train.learning_rate, use train.precision: fp32 or bf16 instead of fp16, "
                                "or check the data")
        return loss

    def _save_checkpoint(self, model, trial) -> None:
        """Save like the HF Trainer does (model, optimizer, scheduler, scaler, RNG, trainer state), but
        into a temporary directory that is renamed to ``step-N`` once everything is on disk."""
        step = self.state.global_step
        root = self.run_dir / "checkpoints"
        final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
        if self.args.should_save:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.store_flos()
        self.save_model(str(tmp), _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(tmp))
            self._save_scaler(str(tmp))
            self._save_rng_state(str(tmp))  # every rank writes its own RNG file
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self.state.save_to_json(str(tmp / TRAINER_STATE_NAME))
            if self.checkpoint_meta is not None:
                (tmp / FATUNE_JSON).write_text(json.dumps(self.checkpoint_meta, indent=2, ensure_ascii=False))
            if final.exists():  # the same step saved again (Ctrl-C right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            rotate(self.run_dir, self.keep_checkpoints)
        self.accelerator.wait_for_everyone()
