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
tensor); a trained head 4.32 vs 5.41. Under ``torch.no_grad()`` (evaluation) only the loss is computed:
one matmul per tile, and no weight gradient even for a trained head.

**Precision.** The matmuls run in the compute dtype (the autocast dtype when autocast is on, else the
weight's dtype), so bf16/fp16 keep their speed; every sum, max and exponential is fp32 (fp64 when the
inputs are). Half-precision logits are coarse (a logit of 100 is rounded to a multiple of 0.5 in
bf16), and the loss ``logsumexp(z) - z_target`` of a confident token is the small difference of two such
numbers. So the target's logit is computed once in fp32 from the same (compute-dtype) operands and used
in both terms: the loss can never be negative, its error is that of the *other* logits weighted by
their probabilities (tiny when the model is confident, where it matters), and in the gradient the
target's row enters as ``(p_target - 1) * W_target`` in fp32 instead of a large half-precision term
that would cancel. Under bf16 autocast this is at least as accurate as the model's own loss, whose
logits are rounded to bf16 before the cross-entropy.

Why not TRL's fused head (``trl.trainer.utils.add_fused_lm_head``): on devices without Triton it
scores every position, padding and prompt included, recomputes every tile in the backward and
always derives entropy and top-1 statistics for its logs. Why not Liger's kernel: CUDA/Triton only.

``install(model)`` wraps the causal LM's ``forward``: a call with ``fused_head_loss=True`` and
``labels`` returns ``CausalLMOutputWithPast(loss=...)`` (no logits); every other call is the original
forward, so evaluation, generation and saving are unchanged. See ``why_not`` for the models it declines.
"""

from __future__ import annotations

import functools
import logging
import types

import torch
from torch import nn

from fatune.data import IGNORE
from fatune.methods import embed_head

log = logging.getLogger(__name__)

TOKEN_CHUNK = 1024  # tokens per pass over the vocabulary
VOCAB_TILE = 4096  # vocabulary rows per tile: a 1024 x 4096 fp32 tile is 16 MiB and stays in cache
#: With a trained head, logits are computed ``rows x vocab`` at a time: 256 x 262,144 x 4 B = 256 MiB.
#: Bounded memory, and no slower than full logits (``fatune bench head``: 4.43 vs 4.40 ms per token
#: at 512 tokens, 4.32 vs 5.41 at 1,024).
DEFAULT_CHUNK_BYTES = 256 * 2**20
#: Model types whose logits are exactly ``lm_head(last hidden state)``, soft-capped by the config's
#: ``final_logit_softcapping`` where it is set; each is checked against the model's own loss in
#: tests/unit/test_head_precision.py. Others (Granite's ``logits_scaling``, Cohere's ``logit_scale``,
#: multimodal wrappers) keep their own loss rather than train on wrong logits.
MODEL_TYPES = frozenset({"gemma", "gemma2", "gemma3_text", "llama", "mistral", "qwen2", "qwen3"})


def chunk_tokens_for(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    return max(8, chunk_bytes // (4 * vocab_size))


def _softcapped(z, softcap):
    """``(softcap * tanh(z / softcap), d softcapped / d z)``, in place on ``z``."""
    if softcap is None:
        return z, None
    tanh = z.div_(softcap).tanh_()
    return tanh * softcap, 1 - tanh * tanh


def _target_logits(h, weight, targets, softcap, acc):
    """The targets' soft-capped logits and slopes, computed in ``acc`` from the compute-dtype operands,
    and the targets' weight rows (in ``acc``)."""
    rows = weight[targets].to(acc)
    z, slope = _softcapped((h.to(acc) * rows).sum(1), softcap)
    return z, slope, rows


def _add_product(total, a, b):
    """``total += a @ b`` with the matmul in ``b``'s (compute) dtype: in place when that is ``total``'s
    dtype (fp32), else through a half-precision product (torch has no mixed-dtype addmm on CPU)."""
    if b.dtype == total.dtype:
        total.addmm_(a, b)
    else:
        total.add_(a.to(b.dtype) @ b)


def _frozen_head_pass(h, weight, targets, softcap, vocab_tile, want_grad, acc):
    """Loss sum and d loss / d h for one token chunk, one pass over vocabulary tiles (frozen head).

    Online softmax, as in flash attention: a running max ``m``, a running sum ``S`` of ``exp(z - m)``
    and a running ``A = sum_{v != target} exp(z_v - m) W_v``, all rescaled when ``m`` grows. At the end
    ``d loss / d h = A / S + (p_target - 1) W_target`` (times the soft-cap derivatives). Each weight
    tile is read once, for both of its matmuls, while it is in cache. Without ``want_grad`` only the
    loss is computed: one matmul per tile."""
    n = h.shape[0]
    target_z, target_slope, target_rows = _target_logits(h, weight, targets, softcap, acc)
    running_max = torch.full((n, 1), float("-inf"), dtype=acc, device=h.device)
    running_sum = torch.zeros((n, 1), dtype=acc, device=h.device)
    weighted = torch.zeros((n, weight.shape[1]), dtype=acc, device=h.device) if want_grad else None
    for start in range(0, weight.shape[0], vocab_tile):
        tile = weight[start:start + vocab_tile]
        z, slope = _softcapped((h @ tile.T).to(acc), softcap)
        hit = ((targets >= start) & (targets < start + tile.shape[0])).nonzero().squeeze(1)
        z[hit, targets[hit] - start] = target_z[hit]  # the same target logit as in the loss below
        new_max = torch.maximum(running_max, z.amax(1, keepdim=True))
        rescale = torch.exp(running_max - new_max)
        e = z.sub_(new_max).exp_()
        running_sum.mul_(rescale).add_(e.sum(1, keepdim=True))
        running_max = new_max
        if weighted is not None:
            e[hit, targets[hit] - start] = 0  # the target's row enters once, in fp32, below
            slope_e = e if slope is None else e.mul_(slope)
            _add_product(weighted.mul_(rescale), slope_e, tile)
    log_sum = running_max.squeeze(1) + running_sum.squeeze(1).log()
    loss = (log_sum - target_z).sum()
    if weighted is None:
        return loss, None, log_sum
    minus_one = torch.exp(target_z - log_sum) - 1  # p_target - 1
    if target_slope is not None:
        minus_one = minus_one * target_slope
    return loss, weighted / running_sum + minus_one[:, None] * target_rows, log_sum


def _row_grads(h, weight, targets, softcap, row_index, log_sum, grad_rows, acc):
    """``grad_rows += d loss / d weight[row_index]`` for a few trained rows (PEFT trainable tokens):
    ``sum_i (p_i,row - [target_i == row]) h_i`` with the probabilities from the pass's log-sum-exp, so
    the other 262k rows never get a gradient (nor a weight-sized buffer)."""
    z, slope = _softcapped((h @ weight[row_index].T).to(acc), softcap)
    grad = z.sub_(log_sum[:, None]).exp_()
    grad -= (targets[:, None] == row_index[None, :]).to(acc)
    if slope is not None:
        grad.mul_(slope)
    grad_rows.add_(grad.T @ h.to(acc))


def _trained_head_chunk(h, weight, targets, softcap, grad_weight, want_hidden, acc):
    """Loss sum and gradients for a few tokens over the full vocabulary (the head trains too)."""
    rows = torch.arange(len(targets), device=h.device)
    z = (h @ weight.T).to(acc)
    z[rows, targets] = (h.to(acc) * weight[targets].to(acc)).sum(1)  # the target logit in full precision
    z, slope = _softcapped(z, softcap)
    lse = torch.logsumexp(z, dim=-1)
    loss = (lse - z[rows, targets]).sum()
    grad = z.sub_(lse[:, None]).exp_()  # softmax - onehot, in place in the logits buffer
    grad[rows, targets] -= 1
    if slope is not None:
        grad.mul_(slope)
    _add_product(grad_weight, grad.T, h)
    return loss, (grad.to(weight.dtype) @ weight).to(acc) if want_hidden else None


def _dtypes(hidden, weight):
    """(compute dtype of the matmuls, accumulation dtype): the autocast dtype when autocast is on."""
    device_type = hidden.device.type
    compute = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    return compute, torch.promote_types(compute, torch.float32)


def _fused(hidden, weight, targets, softcap, chunk_tokens, want_hidden, want_weight, row_index=None):
    """(loss sum, d loss / d hidden or None, d loss / d weight or None), all in the accumulation dtype.
    With ``row_index``, the weight gradient is only that of those rows (``(len(row_index), dim)``)."""
    compute, acc = _dtypes(hidden, weight)
    with torch.autocast(hidden.device.type, enabled=False):
        h_all, w = hidden.to(compute), weight.to(compute)
        grad_hidden = torch.zeros_like(hidden, dtype=acc) if want_hidden else None
        rows_only = row_index is not None and want_weight
        shape = (len(row_index), weight.shape[1]) if rows_only else weight.shape
        grad_weight = torch.zeros(shape, dtype=acc, device=weight.device) if want_weight else None
        total = hidden.new_zeros((), dtype=acc)
        step = chunk_tokens or (chunk_tokens_for(weight.shape[0]) if want_weight else TOKEN_CHUNK)
        for start in range(0, hidden.shape[0], step):
            h, t = h_all[start:start + step], targets[start:start + step]
            if want_weight and not rows_only:
                loss, grad = _trained_head_chunk(h, w, t, softcap, grad_weight, want_hidden, acc)
            else:
                loss, grad, log_sum = _frozen_head_pass(h, w, t, softcap, VOCAB_TILE, want_hidden, acc)
                if rows_only:
                    _row_grads(h, w, t, softcap, row_index, log_sum, grad_weight, acc)
            total += loss
            if grad is not None:
                grad_hidden[start:start + step] = grad
    return total, grad_hidden, grad_weight


class FusedHeadLoss(torch.autograd.Function):
    """``sum_i -log softmax(softcap(hidden_i @ weight.T))[target_i]`` with its gradient computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk_tokens, row_index=None, rows=None):
        # ``rows``: trained rows already spliced into ``weight`` at ``row_index`` (a detached copy); their
        # gradient is returned for ``rows`` alone.
        want_weight = ctx.needs_input_grad[1] or (rows is not None and ctx.needs_input_grad[6])
        total, grad_hidden, grad_weight = _fused(hidden, weight, targets, softcap, chunk_tokens,
                                                 ctx.needs_input_grad[0], want_weight,
                                                 row_index if rows is not None else None)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype if rows is None else rows.dtype)
        ctx.rows = rows is not None
        return total

    @staticmethod
    def backward(ctx, grad_total):
        # Scaled in place: a trained head's gradient is as large as the weight (604M values for Gemma 2
        # 2B's tied matrix), and a scaled copy would hold it twice. A second backward through the same
        # graph (retain_graph) then fails autograd's in-place check instead of scaling twice.
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        grad_weight = None if grad_weight is None else grad_weight.mul_(grad_total).to(weight_dtype)
        return (
            None if grad_hidden is None else grad_hidden.mul_(grad_total).to(hidden_dtype),
            None if ctx.rows else grad_weight,
            None, None, None, None,
            grad_weight if ctx.rows else None,
        )


def fused_head_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, softcap=None,
                        chunk_tokens: int | None = None, rows: tuple | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss over trained positions (fp32, or fp64 for fp64 inputs), and how many there were.

    ``hidden`` is ``(batch, seq, dim)``, ``labels`` ``(batch, seq)`` aligned with the inputs (the shift
    happens here, as in transformers' causal LM loss). Without gradients (``torch.no_grad()``, or no
    input that requires one) only the loss is computed."""
    hidden, labels = hidden[:, :-1], labels[:, 1:]
    trained = labels != IGNORE
    h, t = hidden[trained], labels[trained]
    row_index, row_values = rows if rows is not None else (None, None)
    trained_rows = row_values is not None and row_values.requires_grad
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad or trained_rows):
        return FusedHeadLoss.apply(h, weight, t, softcap, chunk_tokens, row_index, row_values), trained.sum()
    return _fused(h, weight, t, softcap, chunk_tokens, False, False)[0], trained.sum()


def output_weight(model) -> tuple[torch.Tensor, tuple | None]:
    """The LM head's effective weight, and the trained rows in it as ``(index, values)`` or None.

    Under PEFT's trainable tokens (lora/qlora ``method.chat_tokens``) the head is a wrapper whose forward
    splices the trained rows into a copy of the frozen weight; under embed_head with a row subset, a hook
    does. The fused head scores with such a copy (or the trained rows would never be predicted) made
    without autograd, and takes the rows' gradient on its own: through the copy, autograd would build a
    dense gradient for all 262k rows to keep a few of them."""
    head = model.get_output_embeddings()
    adapter = getattr(head, "token_adapter", None)
    if adapter is None:
        return embed_head.fused_head_weight(model) or (head.weight, None)
    if adapter.merged or adapter.disable_adapters or not adapter.active_adapters:
        return adapter.base_layer.weight, None
    (name,) = adapter.active_adapters  # PEFT trains one adapter at a time
    with torch.no_grad():
        weight = adapter.get_merged_weights([name])
    index = torch.as_tensor(adapter.token_indices[name], device=weight.device)
    return weight, (index, adapter.trainable_tokens_delta[name])


def why_not(model) -> str | None:
    """None when the fused head reproduces ``model``'s loss, else the reason it declines (one line)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    model_type = getattr(model.config, "model_type", None)
    outer = model.get_output_embeddings()
    adapter = getattr(outer, "token_adapter", None)  # PEFT trainable tokens wrap the Linear (see output_weight)
    head = adapter.base_layer if adapter is not None else outer
    if model_type not in MODEL_TYPES:
        return (f"model type {model_type!r} is not one whose logits it is tested to reproduce "
                f"({', '.join(sorted(MODEL_TYPES))})")
    if type(head) is not nn.Linear or head.bias is not None:
        return f"the LM head is a {type(head).__name__}{' with a bias' if type(head) is nn.Linear else ''}, not a plain Linear"
    # embed_head's own hook splices its rows into the logits; output_weight splices them into the weight.
    if any(module._forward_pre_hooks or module._forward_hooks.keys() - embed_head.head_hook_ids(model)
           for module in (outer, head)):
        return "the LM head carries forward hooks that the fused head would skip"
    if not hasattr(model, model.base_model_prefix):
        return f"{type(model).__name__} has no {model.base_model_prefix!r} body to call"
    if is_deepspeed_zero3_enabled():
        return "DeepSpeed ZeRO-3 gathers the head's weight only inside lm_head.forward"
    return None


def can_install(model) -> bool:
    return why_not(model) is None


def install(model, chunk_tokens: int | None = None) -> bool:
    """Let ``model(..., labels=..., fused_head_loss=True)`` use the fused head; ``False`` (and one line
    saying why) if it can't."""
    if getattr(model, "_fatune_fused_head", False):
        return True
    reason = why_not(model)
    if reason is not None:
        log.warning("train.fused_head: off for this model, using its own loss: %s", reason)
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
        weight, rows = output_weight(self)
        total, count = fused_head_loss_sum(hidden, weight, labels, softcap, chunk_tokens, rows)
        divisor = num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
        return CausalLMOutputWithPast(loss=total / divisor)

    model.forward = types.MethodType(forward, model)
    model._fatune_fused_head = True
    return True
