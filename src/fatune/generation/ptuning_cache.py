"""Cached generation for P-Tuning: the one place fatune goes beyond PEFT for generation.

PEFT's P-Tuning ``generate(use_cache=True)`` (peft 0.21, transformers 5.24) runs but returns different
tokens than ``use_cache=False``: its ``prepare_inputs_for_generation`` prepends the virtual tokens to
the embeddings again at decoding steps. The seed therefore told users to pass ``use_cache=False``,
which recomputes the virtual tokens and the whole sequence at every step (quadratic in length).

The fix is small: the prompt encoder's output does not depend on the input, so compute the virtual
token embeddings once, build each row as ``[left padding][virtual tokens][prompt embeddings]``, and
hand ``inputs_embeds`` plus the attention mask to the *base* model's ``generate``. Positions come from
the attention mask, so every row sees exactly what it would see alone (virtual tokens at positions
0..V-1, the prompt after them), and the KV cache works as for any model.
"""

from __future__ import annotations

import torch


def virtual_token_embeddings(peft_model) -> torch.Tensor:
    """The prompt encoder's output for one example: ``[num_virtual_tokens, hidden]``."""
    return peft_model.get_prompt(batch_size=1)[0]


def ptuning_inputs(peft_model, input_ids: torch.Tensor, attention_mask: torch.Tensor, placeholder: int,
                   virtual: torch.Tensor | None = None):
    """``input_ids``, ``inputs_embeds`` and ``attention_mask`` for left-padded ``input_ids``, with the virtual
    tokens after each row's padding, exactly where PEFT puts them for an unpadded prompt.

    The ids carry ``placeholder`` (the pad id) at the virtual positions: ``generate`` needs ids as long
    as the embeddings to track the prompt, which a repetition penalty reads (with embeddings alone it
    would penalize only new tokens, unlike the reference path).

    ``virtual`` is the run's ``virtual_token_embeddings``, when computed ahead (``fatune serve`` computes it
    once per run and passes the *base* model as ``peft_model``: only its word embeddings are used then)."""
    embed = peft_model.get_input_embeddings()  # the base's (scaled) word embeddings, as PEFT uses them
    tokens = embed(input_ids)
    virtual = (virtual_token_embeddings(peft_model) if virtual is None else virtual).to(tokens.dtype)
    n_virtual = virtual.shape[0]
    ids, rows, masks = [], [], []
    for row_ids, row, mask in zip(input_ids, tokens, attention_mask):
        pad = int((mask == 0).sum())
        ids.append(torch.cat([row_ids[:pad], row_ids.new_full((n_virtual,), placeholder), row_ids[pad:]]))
        rows.append(torch.cat([row[:pad], virtual, row[pad:]]))
        masks.append(torch.cat([mask[:pad], mask.new_ones(n_virtual), mask[pad:]]))
    return torch.stack(ids), torch.stack(rows), torch.stack(masks)


def generate_ptuning_cached(peft_model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **settings):
    """Greedy/beam/sampled generation with a KV cache; returns only the new tokens."""
    return generate_with_virtual(peft_model.get_base_model(), virtual_token_embeddings(peft_model), input_ids,
                                 attention_mask, **settings)


def generate_with_virtual(base_model, virtual: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          **settings):
    """``generate_ptuning_cached`` with the virtual tokens computed ahead, on the base model alone (the one
    a server shares between runs); returns only the new tokens."""
    ids, inputs_embeds, mask = ptuning_inputs(base_model, input_ids, attention_mask, settings["pad_token_id"],
                                              virtual)
    out = base_model.generate(input_ids=ids, inputs_embeds=inputs_embeds, attention_mask=mask, use_cache=True,
                              **settings)
    return out[:, ids.shape[1]:]
