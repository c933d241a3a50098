"""Precision, optimizer and ``TrainingArguments`` for a config on this machine.

Rules: bf16 on GPUs that support it, fp32 on CPU. How fast a CPU runs bf16 is measured, never assumed:
AVX2-only CPUs (the reference machine) run bf16 matmuls ~100x slower than fp32, and TRL's SFTConfig,
which defaults to bf16, silently trains ~14x slower there; CPUs with AMX run them several times faster.
CPU bf16 is used only when asked for; ``auto`` stays fp32 (exact, and what the tests compare against)
and says so when this CPU would run bf16 faster. fp16 training
of Gemma 2 is refused unless forced: its soft-capped logits overflow in fp16. 8-bit paged AdamW (as
the seed used) when bitsandbytes and CUDA are present.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fatune.errors import FatuneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    precision: str  # fp32 | bf16 | fp16
    optimizer: str
    device: str  # cuda | cpu
    model_dtype: object  # torch dtype to load the base in


@lru_cache(maxsize=1)
def cpu_bf16_speedup(size: int = 512, repeats: int = 4) -> float:
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones (measured, ~20 ms)."""
    import torch

    def seconds(dtype) -> float:
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        a @ b  # warm up the kernel
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return time.perf_counter() - start

    return seconds(torch.float32) / max(seconds(torch.bfloat16), 1e-9)


def resolve(train_cfg, model_type: str, method: str = "full") -> Settings:
    import torch

    cuda = torch.cuda.is_available()
    precision = train_cfg.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        if not cuda and cpu_bf16_speedup() > 1.5:
            log.warning("this CPU runs bf16 matmuls %.1fx faster than fp32; train.precision=bf16 may train faster "
                        "(fatune stays on exact fp32 unless asked)", cpu_bf16_speedup())
    elif precision == "bf16" and not cuda and cpu_bf16_speedup() < 1:
        log.warning("train.precision=bf16: this CPU runs bf16 matmuls %.0fx slower than fp32; expect slow training",
                    1 / cpu_bf16_speedup())
    if precision == "fp16":
        if not cuda:
            raise FatuneError("train.precision: fp16 mixed precision needs a CUDA GPU; use fp32 on CPU")
        if model_type == "gemma2" and not train_cfg.force_fp16:
            raise FatuneError("train.precision: fp16 training of Gemma 2 overflows its soft-capped logits; use bf16 "
                              "or fp32, or set train.force_fp16: true to accept the risk (the NaN guard stops a bad run)")
    optimizer = train_cfg.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if cuda and _has_bitsandbytes() else "adamw_torch"
    elif "8bit" in optimizer and not cuda:
        log.warning("train.optimizer=%s on CPU: bitsandbytes' 8-bit optimizers are meant for CUDA", optimizer)
    # A frozen base (LoRA, P-Tuning) may sit in half precision on a GPU; trained weights stay fp32 and
    # mixed precision autocasts. On CPU everything is fp32.
    dtype = torch.float32
    if cuda and method in ("lora", "ptuning") and precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return Settings(precision, optimizer, "cuda" if cuda else "cpu", dtype)


def _has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def training_arguments(config, out: Path, settings: Settings, has_eval: bool = True):
    from transformers import TrainingArguments

    train = config.train
    scheduler = train.scheduler
    if scheduler == "constant" and train.warmup_ratio > 0:
        scheduler = "constant_with_warmup"
    distributed_cpu = settings.device == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=train.batch_size, per_device_eval_batch_size=config.eval.batch_size,
        gradient_accumulation_steps=train.grad_accum, learning_rate=train.learning_rate,
        lr_scheduler_type=scheduler, warmup_steps=train.warmup_ratio,  # a float below 1 is a ratio of all steps
        weight_decay=train.weight_decay, max_grad_norm=train.max_grad_norm, optim=settings.optimizer,
        num_train_epochs=train.epochs, max_steps=train.max_steps,
        logging_steps=train.logging_steps, logging_nan_inf_filter=False,
        eval_strategy="steps" if has_eval else "no", eval_steps=train.eval_steps,
        save_strategy="steps", save_steps=train.save_steps, save_total_limit=None,  # rotation: FatuneTrainer
        seed=train.seed, data_seed=train.seed,
        bf16=settings.precision == "bf16", fp16=settings.precision == "fp16", use_cpu=settings.device == "cpu",
        activation_checkpointing=train.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if train.gradient_checkpointing else None,
        dataloader_num_workers=train.num_workers, dataloader_pin_memory=settings.device == "cuda",
        remove_unused_columns=False,  # the collator picks its columns (seq_lengths stays out of the batch)
        include_num_input_tokens_seen="non_padding",
        prediction_loss_only=True,  # evaluation needs the loss only: no logits are gathered
        torch_compile=train.compile,
        report_to="none", disable_tqdm=True,  # fatune's own progress bar and loggers
        ddp_backend="gloo" if distributed_cpu else None,
        ddp_find_unused_parameters=False,
    )
