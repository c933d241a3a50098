"""The LM head and cross-entropy fused: logits only at trained positions, a few tokens at a time.

Gemma's vocabulary is huge (256k/262k rows): in Gemma 3 270M the head is 168M of the 268M
parameters, so projecting every position and keeping ``(tokens, vocab)`` fp32 logits for the backward
dominates both the time and the memory of a training step. Here the head is projected only at
positions whose next token is trained, in chunks of ``chunk_tokens`` rows, and the gradient with
respect to the hidden states (and the head weight, when it is trained) is computed in the same pass
(``softmax - onehot`` is known as soon as the chunk's logits are): two matmuls per chunk instead of
the three of a recompute-in-backward scheme, and full logits never exist.

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

#: Chunk logits are ``chunk_tokens x vocab`` fp32: 64 x 262,144 x 4 B = 64 MiB for Gemma 3.
DEFAULT_CHUNK_BYTES = 64 * 2**20


def chunk_tokens_for(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    return max(8, chunk_bytes // (4 * vocab_size))


class FusedHeadLoss(torch.autograd.Function):
    """``sum_i -log softmax(softcap(hidden_i @ weight.T))[target_i]`` with its gradient computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk_tokens):
        want_hidden = ctx.needs_input_grad[0]
        want_weight = ctx.needs_input_grad[1]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 (fp64 in the exactness tests)
        grad_hidden = torch.zeros_like(hidden, dtype=acc) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=acc) if want_weight else None
        total = hidden.new_zeros((), dtype=acc)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h = hidden[start:start + chunk_tokens]
            t = targets[start:start + chunk_tokens]
            logits = (h @ weight.T).to(acc)
            if softcap is not None:  # Gemma 2: z = cap * tanh(logits / cap)
                tanh = torch.tanh(logits.div_(softcap))
                logits = tanh * softcap
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not (want_hidden or want_weight):
                continue
            # d loss / d z = softmax(z) - onehot(target), built in place in the logits buffer
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(t)), t] -= 1
            if softcap is not None:
                grad.mul_(1 - tanh * tanh)
            grad = grad.to(weight.dtype)
            if want_hidden:
                grad_hidden[start:start + chunk_tokens] = grad @ weight
            if want_weight:
                grad_weight.addmm_(grad.T.to(acc), h.to(acc))
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
    chunk_tokens = chunk_tokens or chunk_tokens_for(weight.shape[0])
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
