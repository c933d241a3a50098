"""Training methods. Each module exposes ``apply(model, cfg, tokenizer=None) -> model`` and
``report(model) -> dict``; methods whose trained state is not a plain HF or PEFT model also expose
``merge(model) -> model``. None of them knows about trainers or files.
"""

from __future__ import annotations

import importlib
from types import ModuleType

METHOD_NAMES = ("ptuning", "qlora", "lora", "embed_head", "full")


def get_method(name: str) -> ModuleType:
    """The module implementing method ``name`` (``fatune.methods.<name>``)."""
    if name not in METHOD_NAMES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHOD_NAMES)}")
    return importlib.import_module(f"fatune.methods.{name}")


def count_params(model, trainable_only: bool = False) -> int:
    """Parameters counted once per tensor (tied matrices once), 4-bit packed weights at their real size."""
    seen, total = set(), 0
    for param in model.parameters():
        if id(param) in seen or (trainable_only and not param.requires_grad):
            continue
        seen.add(id(param))
        # bitsandbytes packs two 4-bit weights per uint8 element
        total += param.numel() * (2 if type(param).__name__ == "Params4bit" else 1)
    return total


def parameter_report(model) -> dict:
    return {"trainable_params": count_params(model, trainable_only=True), "total_params": count_params(model)}
