"""Batch prepared rows for the trainer (right padding).

Packed rows go in with ``position_ids`` that restart at every conversation and no attention mask:
transformers then keeps attention inside each conversation (``find_packed_sequence_indices``), as long
as the forward creates no KV cache (the trainer sets ``use_cache=False``). Padding is appended as one
more "conversation" with its own restarting positions and no labels, so real tokens never see it.

Unpacked rows (P-Tuning) get an attention mask instead: PEFT prompt learning ignores ``position_ids``
and extends the attention mask over its virtual tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fatune.data import IGNORE


@dataclass
class RowCollator:
    pad_token_id: int
    packed: bool = True

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        input_ids, labels, positions, mask = [], [], [], []
        for row in rows:
            n = len(row["input_ids"])
            pad = width - n
            input_ids.append(list(row["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(row["labels"]) + [IGNORE] * pad)
            positions.append(list(row["position_ids"]) + list(range(pad)))
            mask.append([1] * n + [0] * pad)
        batch = {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}
        if self.packed:
            batch["position_ids"] = torch.tensor(positions)
        else:
            batch["attention_mask"] = torch.tensor(mask)
        return batch
