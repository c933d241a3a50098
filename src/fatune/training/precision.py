"""Precision, optimizer and ``TrainingArguments`` for a config on this machine.

``train.precision: auto`` is decided once, at the start of a run, and recorded in the run (``config.yaml``
and ``final/fatune.json``): a resumed run, generation and evaluation reuse the decision instead of
deciding again on a machine that may now measure differently.

* bf16 on GPUs that support it;
* bf16 mixed precision on CPUs with fast native bf16 (AVX512-BF16, AMX). How fast a CPU runs bf16 is
  measured, never assumed: AVX2-only CPUs run bf16 matmuls ~100x slower than fp32 (TRL's SFTConfig,
  which defaults to bf16, silently trains ~14x slower there), CPUs with native bf16 several times faster;
* fp32 elsewhere.

bf16 mixed precision: frozen weights are stored in bf16 (the base of lora, ptuning and embed_head, the
non-quantized weights of qlora), what trains stays fp32 with fp32 optimizer state (master weights), and
the forward runs under autocast. ``full`` trains every weight, so all stay fp32. fp16 on CPU is allowed
so GPU configs can be tried out on a CPU (it is slow there); fp16 training of Gemma 2 is refused unless
forced: its soft-capped logits overflow in fp16. 8-bit paged AdamW (as the seed used) when bitsandbytes
and CUDA are present.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fatune.artifact import CHECKPOINTS_DIR
from fatune.errors import FatuneError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
# auto picks CPU bf16 only when it clearly pays: near 1x, bf16's rounding would buy nothing.
CPU_BF16_MIN_SPEEDUP = 1.5
# Methods whose base is frozen and stored in half precision under mixed precision (``full`` trains it all).
HALF_BASE_METHODS = ("lora", "ptuning", "qlora", "embed_head")


@dataclass(frozen=True)
class Settings:
    precision: str  # fp32 | bf16 | fp16
    optimizer: str
    device: str  # cuda | cpu
    model_dtype: object  # torch dtype to load the base in
    reason: str = ""  # why ``auto`` resolved to ``precision`` (empty when the config named it)


@lru_cache(maxsize=1)
def cpu_bf16_speedup(size: int = 1024, repeats: int = 5) -> float:
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones (measured once, about half a second).

    Each dtype's best of ``repeats`` timings, taken in turns: on a busy machine the fastest run is
    the one least disturbed by other processes, and alternating spreads any slow spell over both."""
    import torch

    pairs = {dtype: (torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype))
             for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(pairs, float("inf"))
    for a, b in pairs.values():
        a @ b  # warm up the kernels
    for _ in range(repeats):
        for dtype, (a, b) in pairs.items():
            start = time.perf_counter()
            a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


def resolve_precision(train_cfg, model_type: str, method: str = "full", recorded: str | None = None) -> Settings:
    """The precision, optimizer and base dtype for this machine. ``recorded``: the precision this run
    resolved when it started (a resumed run); ``auto`` keeps it instead of measuring again."""
    import torch

    cuda = torch.cuda.is_available()
    precision, reason = train_cfg.precision, ""
    if precision == "auto":
        precision, reason = (recorded, "as this run resolved it when it started") if recorded else _auto(cuda)
    elif precision == "bf16" and not cuda and cpu_bf16_speedup() < 1:
        log.warning("train.precision=bf16: this CPU runs bf16 matmuls %.1fx slower than fp32; expect slow training",
                    1 / cpu_bf16_speedup())
    if precision == "fp16":
        _check_fp16(train_cfg, model_type, cuda)
    optimizer = train_cfg.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if cuda and _has_bitsandbytes() else "adamw_torch"
    elif "8bit" in optimizer and not cuda:
        log.warning("train.optimizer=%s on CPU: bitsandbytes' 8-bit optimizers are meant for CUDA", optimizer)
    return Settings(precision, optimizer, "cuda" if cuda else "cpu", base_dtype(precision, method, cuda), reason)


def _auto(cuda: bool) -> tuple[str, str]:
    import torch

    if cuda:
        return ("bf16", "this GPU supports bf16") if torch.cuda.is_bf16_supported() else ("fp32", "this GPU lacks bf16")
    speedup = cpu_bf16_speedup()
    if speedup >= CPU_BF16_MIN_SPEEDUP:
        return "bf16", (f"this CPU multiplies bf16 matrices {speedup:.1f}x faster than fp32 (mixed precision: "
                        "frozen weights in bf16, trained weights and optimizer state in fp32)")
    return "fp32", f"bf16 is {speedup:.2f}x here (bf16 mixed precision needs {CPU_BF16_MIN_SPEEDUP}x)"


def _check_fp16(train_cfg, model_type: str, cuda: bool) -> None:
    if model_type == "gemma2" and not train_cfg.force_fp16:
        raise FatuneError("train.precision: fp16 training of Gemma 2 overflows its soft-capped logits; use bf16 "
                          "or fp32, or set train.force_fp16: true to accept the risk (the NaN guard stops a bad run)")
    if not cuda:
        log.warning("train.precision=fp16 on CPU: fp16 autocast with loss scaling, for trying out GPU configs; it is "
                    "slow (CPUs without native fp16 train ~30x slower than fp32): train with bf16 or fp32 on CPUs")


def base_dtype(precision: str, method: str, cuda: bool):
    """The dtype to load the base in: half for a frozen base under bf16 (any device) or fp16 (GPU only:
    fp16 weights on a CPU would only be slow), fp32 otherwise."""
    import torch

    if method in HALF_BASE_METHODS and precision == "bf16":
        return torch.bfloat16
    if method in ("lora", "ptuning") and precision == "fp16" and cuda:
        return torch.float16
    return torch.float32


def upcast_trainable(model) -> None:
    """Trained parameters in fp32 (master weights; AdamW state follows their dtype) over a half-precision
    base: embed_head's trained matrix or rows come from bf16 weights (PEFT upcasts its own adapters)."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()  # in place on the Parameter: a tied head keeps sharing it


def agree(settings: Settings) -> Settings:
    """Rank 0's settings on every rank: under DDP each process measured the CPU itself, but a run makes
    one decision. A no-op without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return settings
    shared = [settings]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


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
        output_dir=str(out / CHECKPOINTS_DIR),
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
