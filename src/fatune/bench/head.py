"""``fatune bench head``: the fused LM head against full logits, alone, on the Gemma 3 head's shape.

Loss and gradients for ``tokens`` trained positions of a random ``vocab x hidden`` head (262,144 x 640,
Gemma 3 270M), in one process, each variant timed after a warm-up:

* frozen head (LoRA, QLoRA): ``fatune.training.head`` (online softmax over vocabulary tiles) vs full
  logits + cross-entropy through autograd, gradient with respect to the hidden states;
* trained head (embed_head ``rows=all``, full): the fused 256-token chunks vs full logits, gradients
  with respect to the hidden states and the weight.
"""

from __future__ import annotations

import time

from fatune.bench.common import environment, format_table, positive, write_report


def _seconds(step, repeats: int) -> float:
    step()  # warm-up: allocations, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def bench_head(tokens: int = 1024, vocab: int = 262_144, hidden: int = 640, repeats: int = 2,
               out=None, command: str | None = None) -> dict:
    import torch

    from fatune.training.head import fused_head_loss_sum

    positive(tokens, "--tokens")
    positive(repeats, "--repeats")
    torch.manual_seed(0)
    weight = torch.randn(vocab, hidden) * 0.02
    states = torch.randn(1, tokens + 1, hidden)
    labels = torch.randint(0, vocab, (1, tokens + 1))

    def run(fused: bool, train_head: bool):
        w = weight.clone().requires_grad_(train_head)
        h = states.clone().requires_grad_()

        def step():
            if fused:
                loss = fused_head_loss_sum(h, w, labels)[0]
            else:
                logits = h[0, :-1] @ w.T
                loss = torch.nn.functional.cross_entropy(logits, labels[0, 1:], reduction="sum")
            loss.backward()
            h.grad = w.grad = None

        return _seconds(step, repeats) / tokens * 1e3

    rows = []
    for head_kind, train_head in (("frozen", False), ("trained", True)):
        for variant, fused in (("fused", True), ("full logits", False)):
            rows.append({"head": head_kind, "variant": variant, "ms_per_token": round(run(fused, train_head), 3)})
    report = {"tokens": tokens, "vocab": vocab, "hidden": hidden, "results": rows, "environment": environment(),
              "command": command}
    print(format_table(["head", "variant", "ms / trained token"],
                       [[r["head"], r["variant"], r["ms_per_token"]] for r in rows]))
    write_report(report, out)
    return report
