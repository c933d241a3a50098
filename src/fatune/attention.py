"""Which attention kernel a model loads with (``attention_for``), and fatune's own varlen kernel.

``fatune.models.load_model`` applies ``attention_for``, so the rule and the kernel it may pick sit at the
models' level, below training, generation and evaluation, which all load models through it.

Padding-free attention without a flash-attention build: each packed conversation attends only to itself.
A padding-free batch is one row holding several conversations, their ``position_ids`` restarting at
each. transformers keeps them apart on eager/sdpa by building a ``(tokens x tokens)`` block-diagonal
mask: the attention then costs ``(sum of lengths)^2`` and materializes that mask and score matrix for
every layer. ``flash_attention_2`` does it properly (varlen kernels) but needs CUDA and the package.

``"fatune_varlen"`` (registered with transformers' attention and mask interfaces) runs sdpa, or the
eager math when the model soft-caps attention logits (Gemma 2), once per conversation: cost
``sum of length^2``, causal and sliding-window rules applied inside each conversation. Calls with an
attention mask or a KV cache (evaluation with padding, generation) get exactly sdpa's mask and the
dense computation, so the same loaded model serves training and generation.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fatune.errors import FatuneError

NAME = "fatune_varlen"


def has_flash_attention() -> bool:
    """CUDA and flash-attn >= 2.6.3 (the first with soft-capping, which Gemma 2 needs)."""
    if not torch.cuda.is_available():
        return False
    try:
        from importlib.metadata import version

        from packaging.version import Version

        return Version(version("flash_attn")) >= Version("2.6.3")
    except Exception:  # not installed (or unreadable version)
        return False


def attention_for(model_type: str, requested: str = "auto", padding_free: bool = False) -> str | None:
    """The attention kernel to load a model with.

    Padding-free training (several conversations in one row) wants varlen attention: flash_attention_2
    when installed, else fatune's own ``fatune_varlen`` (``register``, below). Otherwise
    Gemma 2, which soft-caps its attention logits (sdpa ignores that; transformers refuses it), gets
    flash_attention_2 when installed, else eager; other models keep transformers' default.
    """
    if model_type == "gemma2" and requested == "sdpa":
        raise FatuneError("model.attn_implementation: sdpa ignores Gemma 2's attention soft-capping; use eager, "
                          "fatune_varlen or flash_attention_2")
    if requested == "auto" and padding_free:
        requested = "flash_attention_2" if has_flash_attention() else "fatune_varlen"
    if requested == "fatune_varlen":
        return register()
    if requested != "auto":
        return requested
    if model_type != "gemma2":
        return None
    return "flash_attention_2" if has_flash_attention() else "eager"


def _segments(position_ids: torch.Tensor | None, batch: int, length: int) -> list[list[tuple[int, int]]]:
    """Per row, the ``(start, end)`` of each conversation: a new one starts wherever positions don't go up by 1."""
    if position_ids is None:
        return [[(0, length)]] * batch
    position_ids = position_ids.expand(batch, -1)
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    rows = []
    for row in starts.cpu():
        bounds = row.nonzero().flatten().tolist() + [length]
        rows.append(list(zip(bounds[:-1], bounds[1:])))
    return rows


def _attend(query, key, value, mask, scaling, softcap, causal):
    """(heads, q, d) attention over (kv_heads, k, d); ``mask`` is boolean (True = attend) or None."""
    groups = query.shape[-3] // key.shape[-3]
    if softcap is None:  # sdpa shares each key/value head among its query heads without copying them
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                              is_causal=causal and mask is None, enable_gqa=groups > 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=-3)
        value = value.repeat_interleave(groups, dim=-3)
    # Gemma 2 soft-caps the scores before the softmax, which sdpa cannot do: the eager math, in fp32.
    scores = torch.tanh((query @ key.transpose(-1, -2)) * (scaling / softcap)) * softcap
    if causal and mask is None:
        q, k = scores.shape[-2:]
        mask = torch.ones(q, k, dtype=torch.bool, device=scores.device).tril(k - q)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # finite: padded rows stay NaN-free
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype) @ value


def _local_mask(length: int, window: int, device) -> torch.Tensor:
    q = torch.arange(length, device=device)[:, None]
    k = torch.arange(length, device=device)[None, :]
    return (k <= q) & (k > q - window)


def varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                     softcap=None, position_ids=None, **kwargs):
    """transformers attention-function signature; returns ``(batch, q, heads, head_dim)`` and no weights."""
    if dropout and module.training:
        raise NotImplementedError("fatune_varlen attention has no attention dropout")
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    batch, _, q_len, _ = query.shape
    if attention_mask is not None or q_len != key.shape[-2]:  # padding mask or KV cache: the dense path
        mask = attention_mask if attention_mask is None or attention_mask.dtype == torch.bool else attention_mask == 0
        out = _attend(query, key, value, mask, scaling, softcap, causal=False)
        return out.transpose(1, 2).contiguous(), None
    out = torch.empty_like(query)
    for row, segments in enumerate(_segments(position_ids, batch, q_len)):
        for start, end in segments:
            q, k, v = (t[row, :, start:end] for t in (query, key, value))
            local = sliding_window is not None and end - start > sliding_window
            mask = _local_mask(end - start, sliding_window, query.device) if local else None
            out[row, :, start:end] = _attend(q, k, v, mask, scaling, softcap, causal=True)
    return out.transpose(1, 2).contiguous(), None


def varlen_mask(*, attention_mask=None, q_length=None, kv_length=None, q_offset=0, kv_offset=0, **kwargs):
    """No mask for a training forward (segments come from position ids); sdpa's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_length == kv_length and not q_offset and not kv_offset:
        return None
    return sdpa_mask(attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, **kwargs)


def register() -> str:
    """Make ``attn_implementation="fatune_varlen"`` known to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, varlen_mask)
    return NAME
