"""LoRA: low-rank updates on the attention and MLP projections of a full-precision base.

Defaults follow the seed (r=8, alpha=16, dropout 0.01 on q, k, v, o, gate, up, down). The saved
artifact is a plain PEFT adapter: ``PeftModel.from_pretrained(base, OUT/final)``.

``method.chat_tokens`` (default on) also trains the embedding rows of the chat template's turn tokens
(``<start_of_turn>``/``<end_of_turn>``, ``<|im_start|>``/``<|im_end|>``) with PEFT's trainable tokens.
A *base* model never saw them: in Gemma 3 270M's base checkpoint ``<end_of_turn>``'s row has cosine 0.995
with ``<unused1354>`` and hundreds of other never-trained rows. LoRA can only move hidden states, so a tuned
model that "wants" to end its turn picks one of those look-alikes instead ("مشهدmobilpaymobilpay...") and
never stops. Two rows (1,280 numbers for Gemma 3 270M) fix that; for instruction-tuned models they are
already trained and the change is harmless. The rows are tied to the LM head, as the embedding is.
"""

from __future__ import annotations

from fatune.methods import parameter_report


def chat_token_ids(tokenizer) -> list[int]:
    """Ids of the chat templates' turn tokens that ``tokenizer`` has as real (non-unknown) tokens."""
    from fatune.data.templates import TURN_TOKEN_PAIRS

    ids = {tokenizer.convert_tokens_to_ids(token) for pair in TURN_TOKEN_PAIRS for token in pair}
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def lora_config(cfg, tokenizer=None):
    from peft import LoraConfig, TaskType

    tokens = chat_token_ids(tokenizer) if cfg.chat_tokens and tokenizer is not None else []
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                      task_type=TaskType.CAUSAL_LM, trainable_token_indices=tokens or None)


def apply(model, cfg, tokenizer=None):
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg, tokenizer))


def report(model) -> dict:
    return parameter_report(model)
