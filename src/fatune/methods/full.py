"""Full fine-tuning: every weight trains. Meant for small models (the 270M demo) or sharded runs
(DeepSpeed ZeRO / FSDP through accelerate, see configs/accelerate/)."""

from __future__ import annotations

from fatune.methods import parameter_report


def apply(model, cfg, tokenizer=None):
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def report(model) -> dict:
    return parameter_report(model)
