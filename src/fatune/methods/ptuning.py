"""P-Tuning: a PEFT prompt encoder (an MLP) produces virtual tokens prepended to every example.

Defaults follow the seed: 20 virtual tokens, encoder hidden size 128. The base may be 4-bit
(``method.load_in_4bit``) or full precision. PEFT prepends the virtual tokens once per row and ignores
``position_ids``, so packing would hide them from every packed conversation after the first: the config
turns packing off for this method. With gradient checkpointing, the trainer uses non-reentrant
checkpointing, which needs no input that requires grad (the reentrant kind would drop the prompt
encoder's gradient unless the input embeddings required grad).
"""

from __future__ import annotations

from fatune.methods import parameter_report


def apply(model, cfg, tokenizer=None):
    from peft import PromptEncoderConfig, TaskType, get_peft_model

    if getattr(model, "is_loaded_in_4bit", False):
        from fatune.methods.qlora import prepare_4bit

        model = prepare_4bit(model)
    config = PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
                                 encoder_hidden_size=cfg.encoder_hidden_size)
    return get_peft_model(model, config)


def report(model) -> dict:
    return parameter_report(model)
