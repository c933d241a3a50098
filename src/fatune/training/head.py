"""The LM head and cross-entropy fused: logits only at trained positions, a few tokens at a time.

Gemma's vocabulary is huge (256k/262k rows): in Gemma 3 270M the head is 168M of the 268M
parameters, so projecting every position and keeping ``(tokens, vocab)`` fp32 logits for the backward
dominates both the time and the memory of a training step. Here the head is projected only at
positions whose next token is trained, in chunks of ``chunk_tokens`` rows, and the gradient with
respect to the hidden states is computed in the same pass: with a frozen head (LoRA, QLoRA), an
online softmax over vocabulary tiles that stay in cache (``_frozen_head_pass``); with a trained head
(embed_head, full), ``softmax - onehot`` per chunk of tokens over the whole vocabulary, which also
yields the weight gradient. Two matmuls per tile instead of the three of a recompute-in-backward
scheme, and full logits never exist. ``fatune bench head`` (1,024 trained tokens, Gemma 3's head, 2-core
dev CPU): a frozen head takes 2.19 ms per token this way vs 4.32 with full logits (and a 1 GiB logits
tensor); a trained head 4.32 vs 5.41.

Why not TRL's fused head (``trl.trainer.utils.add_fused_lm_head``): on devices without Triton it
scores every position, padding and prompt included, recomputes every tile in the backward and
always derives entropy and top-1 statistics for its logs. Why not Liger's kernel: CUDA/Triton only.

``install(model)`` wraps the causal LM's ``forward``: a call with ``fused_head_loss=True`` and
``labels`` returns ``CausalLMOutputWithPast(loss=...)`` (no logits); every other call is the original
forward, so evaluation, generation and saving are unchanged. It declines models whose head carries
forward hooks or is not a plain ``nn.Linear`` (embed_head with a row subset, PEFT-wrapped heads):
those keep the model's own loss.
"""

from __future__ import annotations

import functools
import types

import torch
from torch import nn

from fatune.data import IGNORE

TOKEN_CHUNK = 1024  # tokens per pass over the vocabulary
VOCAB_TILE = 4096  # vocabulary rows per tile: a 1024 x 4096 fp32 tile is 16 MiB and stays in cache
#: With a trained head, logits are computed ``rows x vocab`` at a time: 256 x 262,144 x 4 B = 256 MiB.
#: Bounded memory, and no slower than full logits (``fatune bench head``: 4.43 vs 4.40 ms per token
#: at 512 tokens, 4.32 vs 5.41 at 1,024).
DEFAULT_CHUNK_BYTES = 256 * 2**20


def chunk_tokens_for(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    return max(8, chunk_bytes // (4 * vocab_size))


def _softcapped(z, softcap):
    """``(softcap * tanh(z / softcap), d softcapped / d z)``, in place on ``z``."""
    if softcap is None:
        return z, None
    tanh = z.div_(softcap).tanh_()
    return tanh * softcap, 1 - tanh * tanh


def _frozen_head_pass(h, weight, targets, softcap, vocab_tile, want_grad=True):
    """Loss sum and d loss / d h for one token chunk, one pass over vocabulary tiles (frozen head).

    Online softmax, as in flash attention: a running max ``m``, a running sum ``S`` of ``exp(z - m)``
    and a running ``A = sum_v exp(z_v - m) W_v``, all rescaled when ``m`` grows. At the end
    ``d loss / d h = A / S - W_target`` (times the soft-cap derivatives). Each weight tile is read once,
    for both of its matmuls, while it is in cache: the head costs two matmuls and one read of the
    weight, with no logits buffer larger than a tile. Without ``want_grad`` (evaluation) only the
    loss is computed: one matmul per tile."""
    n = h.shape[0]
    acc = torch.promote_types(h.dtype, torch.float32)
    running_max = torch.full((n, 1), float("-inf"), dtype=acc, device=h.device)
    running_sum = torch.zeros((n, 1), dtype=acc, device=h.device)
    weighted = torch.zeros((n, weight.shape[1]), dtype=acc, device=h.device) if want_grad else None
    for start in range(0, weight.shape[0], vocab_tile):
        tile = weight[start:start + vocab_tile]
        z, slope = _softcapped((h @ tile.T).to(acc), softcap)
        new_max = torch.maximum(running_max, z.amax(1, keepdim=True))
        rescale = torch.exp(running_max - new_max)
        e = z.sub_(new_max).exp_()
        running_sum.mul_(rescale).add_(e.sum(1, keepdim=True))
        running_max = new_max
        if weighted is not None:
            slope_e = e if slope is None else e.mul_(slope)
            weighted.mul_(rescale).addmm_(slope_e.to(tile.dtype), tile)
    target_rows = weight[targets].to(acc)
    target_z, target_slope = _softcapped((h.to(acc) * target_rows).sum(1), softcap)
    loss = (running_max.squeeze(1) + running_sum.squeeze(1).log() - target_z).sum()
    if weighted is None:
        return loss, None
    grad = weighted / running_sum - (target_rows if target_slope is None else target_slope[:, None] * target_rows)
    return loss, grad


def _trained_head_chunk(h, weight, targets, softcap, grad_weight, want_hidden):
    """Loss sum and gradients for a few tokens over the full vocabulary (the head trains too)."""
    acc = grad_weight.dtype
    z, slope = _softcapped((h @ weight.T).to(acc), softcap)
    lse = torch.logsumexp(z, dim=-1)
    loss = (lse - z.gather(1, targets[:, None]).squeeze(1)).sum()
    grad = z.sub_(lse[:, None]).exp_()  # softmax - onehot, in place in the logits buffer
    grad[torch.arange(len(targets)), targets] -= 1
    if slope is not None:
        grad.mul_(slope)
    grad_weight.addmm_(grad.T, h.to(acc))
    return loss, (grad.to(weight.dtype) @ weight).to(acc) if want_hidden else None


class FusedHeadLoss(torch.autograd.Function):
    """``sum_i -log softmax(softcap(hidden_i @ weight.T))[target_i]`` with its gradient computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk_tokens):
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 (fp64 in the exactness tests)
        grad_hidden = torch.zeros_like(hidden, dtype=acc) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=acc) if want_weight else None
        total = hidden.new_zeros((), dtype=acc)
        step = chunk_tokens or (chunk_tokens_for(weight.shape[0]) if want_weight else TOKEN_CHUNK)
        for start in range(0, hidden.shape[0], step):
            h, t = hidden[start:start + step], targets[start:start + step]
            if want_weight:
                loss, grad = _trained_head_chunk(h, weight, t, softcap, grad_weight, want_hidden)
            else:
                loss, grad = _frozen_head_pass(h, weight, t, softcap, VOCAB_TILE, want_hidden)
            total += loss
            if grad is not None:
                grad_hidden[start:start + step] = grad
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return (
            None if grad_hidden is None else (grad_hidden * grad_total).to(hidden_dtype),
            None if grad_weight is None else (grad_weight * grad_total).to(weight_dtype),
            None, None, None,
        )


def fused_head_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, softcap=None,
                        chunk_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss over trained positions, and how many there were.

    ``hidden`` is ``(batch, seq, dim)``, ``labels`` ``(batch, seq)`` aligned with the inputs (the shift
    happens here, as in transformers' causal LM loss)."""
    hidden, labels = hidden[:, :-1], labels[:, 1:]
    trained = labels != IGNORE
    total = FusedHeadLoss.apply(hidden[trained], weight, labels[trained], softcap, chunk_tokens)
    return total, trained.sum()


def can_install(model) -> bool:
    head = model.get_output_embeddings()
    return (type(head) is nn.Linear and head.bias is None and not head._forward_hooks
            and not head._forward_pre_hooks and hasattr(model, model.base_model_prefix))


def install(model, chunk_tokens: int | None = None) -> bool:
    """Let ``model(..., labels=..., fused_head_loss=True)`` use the fused head; ``False`` if it can't."""
    if getattr(model, "_fatune_fused_head", False):
        return True
    if not can_install(model):
        return False
    from transformers.modeling_outputs import CausalLMOutputWithPast

    original = model.forward
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    @functools.wraps(type(model).forward)  # generate() checks its kwargs against this signature
    def forward(self, *args, fused_head_loss=False, labels=None, num_items_in_batch=None, **kwargs):
        if not fused_head_loss or labels is None:
            if labels is not None:
                kwargs["labels"] = labels
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return original(*args, **kwargs)
        kwargs["use_cache"] = False  # a KV cache would let packed conversations see each other
        # Looked up on every call: PEFT and DDP wrap modules after install.
        hidden = getattr(self, self.base_model_prefix)(*args, **kwargs).last_hidden_state
        total, count = fused_head_loss_sum(hidden, self.get_output_embeddings().weight, labels, softcap,
                                           chunk_tokens)
        divisor = num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
        return CausalLMOutputWithPast(loss=total / divisor)

    model.forward = types.MethodType(forward, model)
    model._fatune_fused_head = True
    return True
