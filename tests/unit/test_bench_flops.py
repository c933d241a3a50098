"""Model FLOPs for MFU: a table of small cases worked out by hand."""

from types import SimpleNamespace

import pytest

from fatune.bench.flops import _attended, training_flops


@pytest.mark.parametrize("n, window, pairs", [(1, None, 1), (5, None, 15), (5, 5, 15), (5, 2, 3 + 3 * 2), (4, 1, 4)])
def test_causal_pairs_with_and_without_a_sliding_window(n, window, pairs):
    assert _attended(n, window) == pairs


def _config(**overrides):
    values = dict(hidden_size=4, intermediate_size=8, num_attention_heads=2, num_key_value_heads=1, head_dim=2,
                  num_hidden_layers=1, vocab_size=10, sliding_window=None, layer_types=["full_attention"])
    values.update(overrides)
    config = SimpleNamespace(**values)
    config.get_text_config = lambda: config
    return config


def test_training_flops_by_hand():
    # one layer: q 4x4, k 4x2, v 4x2, o 4x4, gate/up 4x8, down 8x4 -> 16+8+8+16+32+32+32 = 144 weights
    config = _config()
    base, head, pairs = 144, 40, 3 * 4 // 2  # a 3-token conversation: 6 query-key pairs
    attention = 2 * 2 * 2 * 2 * pairs  # scores + weighted values, 2 heads of dim 2
    frozen = 2 * base * 3 + attention + 2 * head * 2 + 2 * base * 3 + 2 * attention + 2 * head * 2
    assert training_flops(config, [3], [2]) == frozen
    lora = 2 * (4 + 4)  # r=2 on q_proj (4 in, 4 out)
    assert training_flops(config, [3], [2], lora_rank=2, lora_targets=("q_proj",)) == frozen + 6 * lora * 3
    assert training_flops(config, [3], [2], train_base=True, train_head=True) == frozen + 2 * base * 3 + 2 * head * 2


def test_padding_never_counts_and_windows_cut_attention():
    config = _config(sliding_window=2, layer_types=["sliding_attention"])
    assert training_flops(config, [3, 5], [1, 1]) == training_flops(config, [3], [1]) + training_flops(config, [5], [1])
    assert training_flops(config, [100], [0]) < training_flops(_config(), [100], [0])


def test_matmul_peak_is_measured_in_the_dtype_asked_for():
    import torch

    from fatune.bench.flops import matmul_peak_flops

    for dtype in (None, torch.bfloat16):  # bf16 is emulated on AVX2-only CPUs: the probe keeps that short
        assert matmul_peak_flops(size=256, seconds=0.05, dtype=dtype) > 1e6
