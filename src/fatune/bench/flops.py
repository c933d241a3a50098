"""Model FLOPs of a training workload, and the matmul peak of this machine, for MFU.

Model FLOPs count the work the objective needs, whatever an implementation does: matmuls over real
tokens only (no padding), causal attention over each conversation's own prefix (sliding windows
applied), the LM head only at trained positions. Forward: 2 FLOPs per weight per token. Backward: the
gradient with respect to the input for every weight (2 per weight per token) and, for trained weights
only, the gradient with respect to the weight (2 more): a frozen base under LoRA costs 4 FLOPs per
weight per token, not the usual 6. Norms, activations and softmax are not counted (elementwise).
MFU = model FLOPs / (seconds x the fp32 matmul peak measured in the same process).
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


def matmul_peak_flops(size: int = 2048, seconds: float = 1.5, dtype=None) -> float:
    """Best fp32 (or ``dtype``) ``size x size`` matmul rate in FLOP/s on this process's threads/device."""
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    a = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    b = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best
