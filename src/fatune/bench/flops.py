"""Model FLOPs of a training workload, and the matmul peak of this machine, for MFU.

Model FLOPs count the work the objective needs, whatever an implementation does: matmuls over real
tokens only (no padding), causal attention over each conversation's own prefix (sliding windows
applied), the LM head only at trained positions. Forward: 2 FLOPs per weight per token. Backward: the
gradient with respect to the input for every weight (2 per weight per token) and, for trained weights
only, the gradient with respect to the weight (2 more): a frozen base under LoRA costs 4 FLOPs per
weight per token, not the usual 6. Norms, activations and softmax are not counted (elementwise).
MFU = model FLOPs / (seconds x the matmul peak of the precision trained in, measured in the same
process): fp32 runs against the fp32 peak, bf16 runs against the bf16 peak.
"""

from __future__ import annotations

import time


def _layer_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer of one decoder layer, by PEFT target name."""
    h, f = config.hidden_size, config.intermediate_size
    d = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}


def _attended(n: int, window: int | None) -> int:
    """Query-key pairs of one causal conversation of n tokens (each query sees its prefix, at most window)."""
    if window is None or window >= n:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def training_flops(config, lengths: list[int], trained: list[int], lora_rank: int = 0,
                   lora_targets: tuple[str, ...] = (), train_base: bool = False, train_head: bool = False) -> float:
    """FLOPs of one forward+backward over conversations of ``lengths`` tokens with ``trained`` targets each."""
    config = config.get_text_config()
    shapes = _layer_shapes(config)
    layers = config.num_hidden_layers
    base = layers * sum(i * o for i, o in shapes.values())
    lora = layers * sum(lora_rank * (shapes[t][0] + shapes[t][1]) for t in lora_targets if t in shapes)
    d = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * layers
    window = getattr(config, "sliding_window", None)
    head = config.vocab_size * config.hidden_size
    tokens, targets = sum(lengths), sum(trained)
    pairs = sum(_attended(n, window if kind == "sliding_attention" else None)
                for n in lengths for kind in layer_types[:layers])
    attention_forward = 2 * 2 * config.num_attention_heads * d * pairs  # scores and weighted values
    forward = 2 * (base + lora) * tokens + attention_forward + 2 * head * targets
    backward = ((4 if train_base else 2) * base * tokens + 4 * lora * tokens + 2 * attention_forward
                + (4 if train_head else 2) * head * targets)
    return float(forward + backward)


def _product_seconds(a, b, cuda: bool, products: int = 1) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(products):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_peak_flops(size: int | None = None, seconds: float = 1.5, dtype=None) -> float:
    """Best fp32 (or ``dtype``) ``size x size`` matmul rate in FLOP/s on this process's threads/device.

    ``size`` defaults to 2048 on CPU and 8192 on CUDA (a 2048^3 product takes ~20 us on an H100-class
    GPU, where launch overhead would hide the peak)."""
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = dtype or torch.float32
    size = size or (8192 if cuda else 2048)
    # A CPU without native bf16 (AVX2 only) emulates it ~100x slower than fp32: one 2048^3 product would
    # take ~30 s there. A 512^3 probe says how fast this dtype is; slow dtypes are measured at 512.
    probe = torch.randn(512, 512, device=device, dtype=dtype)
    probe @ probe
    if 2 * size**3 * _product_seconds(probe, probe, cuda) / (2 * 512**3) > 0.25:
        size = 512
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = max(best, 4 * 2 * size**3 / _product_seconds(a, b, cuda, products=4))
    return best
