"""A packed row gives, for each conversation, the same logits as that conversation run alone.

transformers keeps attention inside each packed conversation when it gets ``position_ids`` that restart
and no attention mask, and only when the forward creates no KV cache; the second test pins that
condition down, so a transformers change that breaks it fails here rather than silently in training.
"""

import pytest
import torch

from fatune.data import load_conversations, pack, render_batch
from fatune.testing import tiny_gemma2


def _packed_row(tok, n=4, max_length=2048):
    conversations = list(load_conversations("fatune:sample"))[:n]
    samples = render_batch(conversations, tok, "gemma")
    rows = pack(samples, max_length)
    assert len(rows) == 1 and len(rows[0]["seq_lengths"]) == n
    return rows[0]


def _alone_vs_packed(model, row, use_cache):
    ids = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=torch.tensor([row["position_ids"]]), use_cache=use_cache).logits[0]
        worst, start = 0.0, 0
        for n in row["seq_lengths"]:
            alone = model(input_ids=ids[:, start:start + n], use_cache=False).logits[0]
            worst = max(worst, (packed[start:start + n] - alone).abs().max().item())
            start += n
    return worst


@pytest.fixture(scope="module")
def model(tiny_tok):
    return tiny_gemma2(len(tiny_tok), sliding_window=64)


def test_packed_logits_equal_each_conversation_alone(model, tiny_tok):
    assert _alone_vs_packed(model, _packed_row(tiny_tok), use_cache=False) < 1e-4


def test_with_a_kv_cache_transformers_does_not_separate_packed_conversations(model, tiny_tok):
    assert _alone_vs_packed(model, _packed_row(tiny_tok), use_cache=True) > 1e-2
