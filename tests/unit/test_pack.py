"""Packing: boundaries, position ids that restart per conversation, and no trained token lost."""

import random

import pytest

from fatune.data import IGNORE, pack
from fatune.data.pack import unpacked


def sample(n, tag):
    """A fake rendered conversation of ``n`` tokens: ids tagged by conversation, first token untrained."""
    return {"input_ids": [tag * 1000 + i for i in range(n)], "labels": [IGNORE] + [tag * 1000 + i for i in range(1, n)]}


# (lengths, max_length, expected rows as lists of conversation lengths)
CASES = [
    ([3, 3, 3], 6, [[3, 3], [3]]),
    ([5, 1, 4, 2], 6, [[5, 1], [4, 2]]),          # best fit: the 1 goes beside the 5, the 2 beside the 4
    ([6, 6], 6, [[6], [6]]),                      # full rows
    ([2, 7, 3], 10, [[7, 3], [2]]),               # order inside a row follows the input order
    ([], 8, []),
]


@pytest.mark.parametrize("lengths, max_length, expected", CASES)
def test_rows_and_boundaries(lengths, max_length, expected):
    rows = pack([sample(n, t + 1) for t, n in enumerate(lengths)], max_length)
    assert [row["seq_lengths"] for row in rows] == expected
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == sum(row["seq_lengths"])
        assert len(row["input_ids"]) <= max_length
        start = 0
        for n in row["seq_lengths"]:
            assert row["position_ids"][start:start + n] == list(range(n))  # restart at each conversation
            tag = row["input_ids"][start] // 1000
            assert all(t // 1000 == tag for t in row["input_ids"][start:start + n])  # never split or mixed
            assert row["labels"][start] == IGNORE  # no prediction across a boundary
            start += n


def test_no_token_lost_and_deterministic():
    rng = random.Random(0)
    samples = [sample(rng.randint(2, 60), t) for t in range(1, 300)]
    rows = pack(samples, 64)
    assert pack(samples, 64) == rows
    packed_ids = sorted(t for row in rows for t in row["input_ids"])
    assert packed_ids == sorted(t for s in samples for t in s["input_ids"])
    packed_trained = sorted(l for row in rows for l in row["labels"] if l != IGNORE)
    assert packed_trained == sorted(l for s in samples for l in s["labels"] if l != IGNORE)
    fill = sum(len(r["input_ids"]) for r in rows) / (64 * len(rows))
    assert fill > 0.95  # best-fit decreasing packs these random lengths tightly


def test_too_long_sample_is_an_error():
    with pytest.raises(ValueError, match="truncate first"):
        pack([sample(9, 1)], 8)


def test_unpacked_rows_have_the_same_format():
    rows = unpacked([sample(3, 1), sample(2, 2)])
    assert [r["seq_lengths"] for r in rows] == [[3], [2]]
    assert rows[1]["position_ids"] == [0, 1]
