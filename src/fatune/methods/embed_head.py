"""The ``embed_head`` method: train only the input embeddings and the LM head, freeze everything else.

This is the seed project's "traditional" fine-tuning. In Gemma the two matrices are one tied tensor of
``vocab x hidden`` (262k x 640 for Gemma 3 270M, 168M parameters: most of that model), so training
all of it costs full-size AdamW state. ``rows="persian"`` (or a file of token ids) trains only the rows
that matter for Persian: the full matrix stays frozen and one small ``trainable_rows`` parameter
(``n_rows x hidden``) holds copies of the chosen rows. AdamW state exists only for that subset, and
weight decay cannot touch a frozen row (a gradient mask on the full matrix would keep full-size state
and still decay masked rows). Forward hooks splice the trainable rows into the embedding output and
the logits, so no module is replaced: HF saving, loading, tying, Trainer wrapping and gradient
checkpointing all see the original model. The fused LM head (``training.head``, ``train.fused_head``)
never calls the head, so it splices the rows into the head's weight instead (``fused_head_weight``).
``merge`` writes the rows back and removes the hooks.

**Why not PEFT's ``TrainableTokens``** (measured 2026-11-29, peft 0.21.2, torch 2.13, on the 2-core AMD
EPYC dev machine, one core used; ``scripts/trial_trainable_tokens.py``, its docstring has the command).
It trains the same rows with the same results: in fp32 the per-step losses are equal and the merged
matrices agree to 1.4e-7 (tied Gemma 3) and 2.8e-5 (untied Gemma 2) after 5 AdamW steps; other rows stay
bit-identical, gradient checkpointing changes nothing, and ``merge_and_unload`` saves a plain tied model.
But each forward rebuilds the whole matrix (``weight.index_copy``, for the embedding and again for the
tied head) and autograd gives that copy a dense ``vocab x hidden`` gradient before picking the rows out.
On a random Gemma 3 of 262,144 x 256 (2 layers, 128 tokens, 8,332 rows), 3 child processes per arm
(ranges: the 3 runs):

==================================  ==========================  ======================
arm                                 step peak RSS over model    CPU s/step (median)
==================================  ==========================  ======================
these hooks, full logits            423 MiB                     0.90-0.96
TrainableTokens                     674 MiB (+one fp32 matrix)  1.33-1.53
hooks, fused head (a)               314 MiB                     0.74-0.75
TrainableTokens, fused head (a)     314 MiB                     0.94-1.01
==================================  ==========================  ======================

(a) ``training.head``'s fused loss. It takes these hooks' rows itself since 2026-11-30
(``fused_head_weight``), so ``train.fused_head`` (the default) trains them this way; rerun that day with 5
alternating child processes per arm: 422-423 vs 314 MiB, 0.85-0.89 vs 0.65-0.67 CPU s/step, losses within
9.5e-7 (docs/benchmarks.md). It still declines a ``TrainableTokensLayer`` (not its ``token_adapter``
wrapper), which the trial feeds to it by hand. In bf16, TrainableTokens sums the embedding side's row
gradients in bf16 (4.5e-4 vs 1.5e-3 largest loss gap to fp32 over 5 steps, hooks vs it). What it would
give: checkpoints of only the rows (an adapter of ~43 MB for Gemma 3 270M instead of the whole model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from fatune.data.script import has_persian_letter
from fatune.data.templates import TURN_TOKEN_PAIRS
from fatune.errors import FatuneError

# Turn markers of Gemma and ChatML, flattened from the templates' (start, end) pairs: they open and close
# every assistant reply, so they must train too.
TURN_TOKEN_NAMES = tuple(token for pair in TURN_TOKEN_PAIRS for token in pair)
_STATE = "_fatune_embed_head"  # attribute on the input-embedding module; survives Trainer/PEFT wrapping


@dataclass
class _State:
    rows: str
    n_rows: int
    handles: list = field(default_factory=list)


def persian_token_ids(tokenizer) -> list[int]:
    """Sorted ids of tokens with a Persian/Arabic-script letter, plus special and turn tokens."""
    size = len(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and "ByteLevel" in f"{backend.pre_tokenizer}{backend.decoder}"
    if byte_level:
        # Byte-level BPE spells "س" as "Ø³": only decoding gives the text (one batched call, not a loop).
        texts = tokenizer.batch_decode([[i] for i in range(size)])
    else:
        texts = tokenizer.convert_ids_to_tokens(list(range(size)))
    ids = {i for i, text in enumerate(texts) if text and has_persian_letter(text.replace("\u2581", ""))}
    ids.update(i for i in tokenizer.all_special_ids if i is not None)
    for token in TURN_TOKEN_NAMES:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(i for i in ids if 0 <= i < size)


def read_row_ids(path: str, vocab_size: int) -> list[int]:
    """Token ids from a text file, one per line (blank lines ignored); errors name ``FILE:LINE``."""
    ids = set()
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                text = line.strip()
                if not text:
                    continue
                try:
                    token_id = int(text)
                except ValueError:
                    raise FatuneError(f"{path}:{number}: not a token id: {text!r}") from None
                if not 0 <= token_id < vocab_size:
                    raise FatuneError(f"{path}:{number}: token id {token_id} outside the vocabulary "
                                      f"(0..{vocab_size - 1})")
                ids.add(token_id)
    except (OSError, UnicodeDecodeError) as exc:
        raise FatuneError(f"{path}: cannot read token ids: {exc}") from None
    if not ids:
        raise FatuneError(f"{path}: no token ids (one id per line expected)")
    return sorted(ids)


def _resolve_rows(rows: str, tokenizer, vocab_size: int) -> list[int]:
    if rows == "persian":
        if tokenizer is None:
            raise FatuneError("embed_head rows='persian' needs the tokenizer to find Persian tokens")
        return [i for i in persian_token_ids(tokenizer) if i < vocab_size]
    if os.path.isfile(rows):
        return read_row_ids(rows, vocab_size)
    raise FatuneError(f"embed_head rows must be 'all', 'persian' or a file of token ids; no such file: {rows}")


def _is_tied(model) -> bool:
    head = model.get_output_embeddings()
    weight = model.get_input_embeddings().weight
    return head is not None and (head.weight is weight or head.weight.data_ptr() == weight.data_ptr())


def _embedding_hook(module, args, output):
    """Give positions of subset ids their trainable row (scaled like the module scales its own rows)."""
    input_ids = args[0]
    slot = module.trainable_row_slot[input_ids]
    rows = module.trainable_rows[slot.clamp(min=0)]
    scale = getattr(module, "embed_scale", None)
    if scale is not None:  # Gemma's scaled embeddings multiply inside forward: match it bit for bit
        rows = rows * (scale.to(rows.dtype) if torch.is_tensor(scale) else scale)
    # torch.where instead of boolean indexing: no host sync, and the gradient reaches only used rows.
    return torch.where((slot >= 0).unsqueeze(-1), rows.to(output.dtype), output)


def _head_hook(module, args, output, embedding, rows_name):
    """Recompute the subset's logits from the trainable rows so their gradient flows there."""
    rows = getattr(embedding if rows_name == "trainable_rows" else module, rows_name)
    ids = embedding.trainable_row_ids
    logits = args[0] @ rows.to(args[0].dtype).T
    if getattr(module, "bias", None) is not None:
        logits = logits + module.bias[ids]
    return output.index_copy(-1, ids, logits.to(output.dtype))


def apply(model, cfg, tokenizer=None):
    """Freeze ``model`` except its embeddings and LM head (all rows, or the rows chosen by ``cfg.rows``)."""
    rows = os.fspath(cfg.rows)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if hasattr(embedding, _STATE):
        raise FatuneError("embed_head is already applied to this model")
    tied = _is_tied(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    vocab_size = embedding.weight.shape[0]
    if rows == "all":
        embedding.weight.requires_grad_(True)  # a tied head shares this tensor: trained once, stays tied
        if head is not None and not tied:
            head.weight.requires_grad_(True)
        setattr(embedding, _STATE, _State(rows, vocab_size))
        return model
    ids = torch.tensor(_resolve_rows(rows, tokenizer, vocab_size), dtype=torch.long,
                       device=embedding.weight.device)
    embedding.register_parameter("trainable_rows", nn.Parameter(embedding.weight.detach()[ids].clone()))
    # Persistent, so a checkpoint of the hooked model records which rows its trainable_rows are.
    embedding.register_buffer("trainable_row_ids", ids)
    # id -> slot in trainable_rows (-1: frozen row); one gather per forward instead of a search.
    slot = torch.full((vocab_size,), -1, dtype=torch.long, device=ids.device)
    slot[ids] = torch.arange(len(ids), device=ids.device)
    embedding.register_buffer("trainable_row_slot", slot, persistent=False)
    state = _State(rows, len(ids))
    state.handles.append(embedding.register_forward_hook(_embedding_hook))
    if head is not None:
        rows_name = "trainable_rows"  # tied: the head reads the embedding's rows, one tensor for both
        if not tied:  # an untied head has its own matrix, hence its own trainable copy of the rows
            head.register_parameter("trainable_rows_head", nn.Parameter(head.weight.detach()[ids].clone()))
            rows_name = "trainable_rows_head"
        hook = partial(_head_hook, embedding=embedding, rows_name=rows_name)
        state.handles.append(head.register_forward_hook(hook))
    setattr(embedding, _STATE, state)
    return model


def head_hook_ids(model) -> set[int]:
    """Ids (keys of ``module._forward_hooks``) of the hooks ``apply`` registered: ``training.head`` may ignore
    these on the LM head, because it scores with ``fused_head_weight`` instead of calling the head."""
    state = getattr(model.get_input_embeddings(), _STATE, None)
    return {handle.id for handle in state.handles} if state is not None else set()


def fused_head_weight(model) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None:
    """What the head hook computes, as weights for ``training.head``'s fused head: a copy of the LM head's
    matrix with the trained rows written in, made without autograd, and ``(row ids, trainable rows)``, whose
    gradient the fused head computes for those rows alone (through the copy, autograd would build a dense
    ``vocab x hidden`` gradient to keep a few rows of it). None unless a row subset trains through hooks."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    state = getattr(embedding, _STATE, None)
    if head is None or state is None or not state.handles:
        return None
    # Untied: the head's own copy of the rows; tied: the embedding's, so both sides' gradients meet in one tensor.
    rows = getattr(head, "trainable_rows_head", embedding.trainable_rows)
    ids = embedding.trainable_row_ids
    with torch.no_grad():
        weight = head.weight.index_copy(0, ids, rows.to(head.weight.dtype))
    return weight, (ids, rows)


def merge(model):
    """Fold trained rows into the base matrices and remove hooks and extra tensors; a plain HF model remains."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    state = getattr(embedding, _STATE, None)
    if state is None or state.rows == "all" or not hasattr(embedding, "trainable_rows"):
        return model
    ids = embedding.trainable_row_ids
    with torch.no_grad():
        embedding.weight.index_copy_(0, ids, embedding.trainable_rows.to(embedding.weight.dtype))
        if head is not None and hasattr(head, "trainable_rows_head"):
            head.weight.index_copy_(0, ids, head.trainable_rows_head.to(head.weight.dtype))
            del head.trainable_rows_head
    for handle in state.handles:
        handle.remove()
    state.handles.clear()
    del embedding.trainable_rows, embedding.trainable_row_ids, embedding.trainable_row_slot
    return model


def report(model) -> dict:
    """Trainable and total parameters (each tensor once), tying, and which rows train."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    state = getattr(embedding, _STATE, None)
    extras = {id(getattr(module, name)) for module in (embedding, head) if module is not None
              for name in ("trainable_rows", "trainable_rows_head") if hasattr(module, name)}
    # model.parameters() yields a shared (tied) tensor once; the subset copies are not base parameters.
    unique = list(model.parameters())
    return {
        "trainable_params": sum(p.numel() for p in unique if p.requires_grad),
        "total_params": sum(p.numel() for p in unique if id(p) not in extras),
        "tied": _is_tied(model),
        "rows": state.rows if state else None,
        "trainable_rows": state.n_rows if state else 0,
    }
