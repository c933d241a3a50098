"""LoRA: low-rank updates on the attention and MLP projections of a full-precision base.

Defaults follow the seed (r=8, alpha=16, dropout 0.01 on q, k, v, o, gate, up, down). The saved
artifact is a plain PEFT adapter: ``PeftModel.from_pretrained(base, OUT/final)``.
"""

from __future__ import annotations

from fatune.methods import parameter_report


def lora_config(cfg):
    from peft import LoraConfig, TaskType

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                      task_type=TaskType.CAUSAL_LM)


def apply(model, cfg, tokenizer=None):
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg))


def report(model) -> dict:
    return parameter_report(model)
