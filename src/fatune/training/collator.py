"""Batch prepared rows for the trainer.

Three layouts (``RowCollator.layout``):

* ``flat`` (default): padding-free. The batch's rows, each holding one or more conversations, are
  concatenated into a single row of ``sum(lengths)`` tokens; ``position_ids`` restart at every
  conversation and there is no attention mask. No pad token is ever computed. Attention stays inside
  each conversation: ``fatune_varlen`` (see ``fatune.attention``) or flash-attention's varlen kernels do it
  per conversation; plain eager/sdpa do it through transformers' block-diagonal mask
  (``find_packed_sequence_indices``, as long as the forward creates no KV cache).
* ``padded``: rows right-padded to the longest, with restarting ``position_ids`` and no mask; the
  padding is one more "conversation" without labels, so real tokens never see it.
* ``masked``: rows right-padded with an attention mask, for P-Tuning: PEFT prompt learning ignores
  ``position_ids`` and extends the attention mask over its virtual tokens.

A causal LM predicts token ``i+1`` at position ``i``; the first token of every conversation is never
a target (``render`` gives it no label), so nothing is learned across a conversation boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fatune.data import IGNORE

Layout = Literal["flat", "padded", "masked"]


def _positions(row: dict) -> list[int]:
    return list(row["position_ids"]) if "position_ids" in row else list(range(len(row["input_ids"])))


@dataclass
class RowCollator:
    pad_token_id: int
    layout: Layout = "flat"

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.layout == "flat":
            return {
                "input_ids": torch.tensor([[t for row in rows for t in row["input_ids"]]]),
                "labels": torch.tensor([[t for row in rows for t in row["labels"]]]),
                "position_ids": torch.tensor([[p for row in rows for p in _positions(row)]]),
            }
        width = max(len(row["input_ids"]) for row in rows)
        input_ids, labels, positions, mask = [], [], [], []
        for row in rows:
            n = len(row["input_ids"])
            pad = width - n
            input_ids.append(list(row["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(row["labels"]) + [IGNORE] * pad)
            positions.append(_positions(row) + list(range(pad)))
            mask.append([1] * n + [0] * pad)
        batch = {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}
        if self.layout == "padded":
            batch["position_ids"] = torch.tensor(positions)
        else:
            batch["attention_mask"] = torch.tensor(mask)
        return batch
