"""QLoRA: LoRA on a base quantized to 4 bit (nf4 by default) with bitsandbytes.

The base is quantized while loading (``quantization_config``; its other weights in the dtype the run's
precision loads the base in); ``apply`` freezes it and adds the same LoRA as ``lora``. bitsandbytes 0.50 runs nf4
``Linear4bit`` on CPU too, so this is testable without a GPU.
"""

from __future__ import annotations

from fatune.methods import lora, parameter_report

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def compute_dtype(cfg):
    """``cfg.compute_dtype``, with ``auto`` = bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU."""
    import torch

    if cfg.compute_dtype != "auto":
        return getattr(torch, cfg.compute_dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(cfg):
    """The ``BitsAndBytesConfig`` for loading the base in 4 bit."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
                              bnb_4bit_compute_dtype=compute_dtype(cfg), bnb_4bit_use_double_quant=cfg.double_quant)


def keep_training_layout(model):
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    bitsandbytes 0.50, on CPUs with AVX512-BF16, converts a ``Linear4bit`` weight to an inference layout
    (bf16 absmax) on its first forward in eval mode without grad, i.e. at the first evaluation. That
    layout's kernel has no backward: training steps after it silently get no gradient through the
    base layers (tests/integration/test_methods.py shows it), and the rounded absmax makes evaluation
    disagree with training and with a reloaded model. Training keeps the one exact layout throughout.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def prepare_4bit(model):
    """Ready a 4-bit base for training: freeze it and keep the training layout.

    Of PEFT's ``prepare_model_for_kbit_training`` only the freezing is needed: gradient checkpointing is
    left to the trainer (non-reentrant), and its cast of every non-4-bit weight to fp32 would undo bf16
    mixed precision, which keeps the frozen embeddings and norms in bf16 (an fp32 base has nothing to cast).
    """
    for param in model.parameters():
        param.requires_grad_(False)
    return keep_training_layout(model)


def apply(model, cfg, tokenizer=None):
    return lora.apply(prepare_4bit(model), cfg, tokenizer)


def report(model) -> dict:
    return parameter_report(model)
