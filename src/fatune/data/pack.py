"""Packing: several rendered conversations per training row, with boundaries kept.

Each packed row holds ``input_ids``, ``labels``, ``position_ids`` that restart at 0 at every
conversation, and ``seq_lengths`` (the conversation lengths, in order). Given ``position_ids`` and no
attention mask, transformers' ``masking_utils.find_packed_sequence_indices`` keeps attention inside each
conversation, eager attention included, but only when the forward creates no KV cache
(``use_cache=False``); the tests check that packed logits equal each conversation run alone.

Why not TRL's ``pack_dataset``: it works on Arrow tables and cuts sequences longer than the row at
the row edge, which can leave rows with no trained token; here samples are truncated (and dropped if
nothing trained remains) before packing, and a conversation is never split across rows.
"""

from __future__ import annotations

import bisect
from typing import Sequence


def pack(samples: Sequence[dict], max_length: int) -> list[dict]:
    """Best-fit-decreasing packing of ``samples`` (each at most ``max_length`` tokens) into rows.

    Deterministic: ties keep input order. Every token of every sample lands in exactly one row.
    """
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]["input_ids"]))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted: best fit = first with enough room
    for i in order:
        length = len(samples[i]["input_ids"])
        if length > max_length:
            raise ValueError(f"sample {i} has {length} tokens, more than max_length={max_length}; truncate first")
        at = bisect.bisect_left(free, (length, -1))
        if at < len(free):
            space, b = free.pop(at)
        else:
            space, b = max_length, len(bins)
            bins.append([])
        bins[b].append(i)
        if space - length > 0:
            bisect.insort(free, (space - length, b))
    return [_join([samples[i] for i in sorted(members)]) for members in bins]


def _join(samples: Sequence[dict]) -> dict:
    row = {"input_ids": [], "labels": [], "position_ids": [], "seq_lengths": []}
    for sample in samples:
        n = len(sample["input_ids"])
        row["input_ids"] += sample["input_ids"]
        row["labels"] += sample["labels"]
        row["position_ids"] += range(n)
        row["seq_lengths"].append(n)
    return row


def unpacked(samples: Sequence[dict]) -> list[dict]:
    """One conversation per row, in the same row format as ``pack`` (for methods that cannot pack)."""
    return [_join([sample]) for sample in samples]
