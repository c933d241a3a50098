"""Correctness of the speed levers (their speed is measured by ``fatune bench train``, never here).

* The fused head (logits only at trained positions, chunked, gradient in the forward) gives the same
  loss and gradients as full logits, with and without Gemma 2's final soft-capping.
* A padding-free batch (conversations concatenated, ``fatune_varlen`` attention, fused head) gives the
  same loss and gradients as every conversation run alone through the model's own loss.
* ``fatune_varlen`` with a padding mask or a KV cache is the ordinary dense attention: same logits and
  same generated tokens as eager.
"""

import copy

import pytest
import torch
from torch.nn import functional as F

from fatune import attention
from fatune.data import IGNORE, load_conversations, render_batch
from fatune.testing import tiny_gemma2, tiny_gemma3
from fatune.training import head
from fatune.training.collator import RowCollator


def _reference_loss(hidden, weight, labels, softcap):
    logits = hidden[:, :-1] @ weight.T
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE,
                           reduction="sum")


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("chunk_tokens", [1, 7, 4096])
@pytest.mark.parametrize("trained_head", [False, True], ids=["frozen_head", "trained_head"])
def test_fused_head_equals_full_logits(softcap, chunk_tokens, trained_head, monkeypatch):
    monkeypatch.setattr(head, "VOCAB_TILE", 16)  # several tiles (and a ragged last one) of the 101 rows
    torch.manual_seed(0)
    hidden = torch.randn(2, 37, 16, dtype=torch.float64, requires_grad=True)
    weight = (torch.randn(101, 16, dtype=torch.float64) * 3).requires_grad_(trained_head)
    labels = torch.randint(0, 101, (2, 37))
    labels[torch.rand(2, 37) < 0.4] = IGNORE
    inputs = (hidden, weight) if trained_head else (hidden,)
    expected = _reference_loss(hidden, weight, labels, softcap)
    expected_grads = torch.autograd.grad(expected * 0.37, inputs)

    total, count = head.fused_head_loss_sum(hidden, weight, labels, softcap, chunk_tokens)
    grads = torch.autograd.grad(total * 0.37, inputs)
    assert count == (labels[:, 1:] != IGNORE).sum()
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # evaluation: the loss alone, without the gradient matmuls
        torch.testing.assert_close(head.fused_head_loss_sum(hidden, weight, labels, softcap, chunk_tokens)[0],
                                   expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("trained_head", [False, True], ids=["frozen_head", "trained_head"])
def test_fused_head_fp32_tight(trained_head, monkeypatch):
    monkeypatch.setattr(head, "VOCAB_TILE", 128)
    torch.manual_seed(1)
    hidden = torch.randn(3, 50, 32, requires_grad=True)
    weight = torch.randn(997, 32, requires_grad=trained_head)
    labels = torch.randint(0, 997, (3, 50))
    labels[:, :10] = IGNORE
    inputs = (hidden, weight) if trained_head else (hidden,)
    expected = _reference_loss(hidden, weight, labels, None) / 120
    expected_grads = torch.autograd.grad(expected, inputs)
    total, count = head.fused_head_loss_sum(hidden, weight, labels, chunk_tokens=16)
    grads = torch.autograd.grad(total / count, inputs)
    torch.testing.assert_close(total / count, expected, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_fused_head_with_frozen_weight_and_no_trained_token():
    hidden = torch.randn(1, 5, 8, requires_grad=True)
    weight = torch.randn(11, 8)  # frozen (LoRA): no weight gradient is computed
    labels = torch.full((1, 5), IGNORE)
    total, count = head.fused_head_loss_sum(hidden, weight, labels)
    total.backward()
    assert total.item() == 0 and count.item() == 0 and torch.count_nonzero(hidden.grad) == 0


def _conversations(tok, n=4):
    samples = render_batch(list(load_conversations("fatune:sample"))[:n], tok, "gemma")
    assert all(len(s["input_ids"]) > 16 for s in samples)  # longer than the tiny sliding window
    return samples


@pytest.mark.parametrize("make", [tiny_gemma2, tiny_gemma3], ids=["gemma2", "gemma3"])
def test_padding_free_batch_equals_each_conversation_alone(make, tiny_tok):
    samples = _conversations(tiny_tok)
    reference = make(len(tiny_tok)).train()
    total = sum(reference(input_ids=torch.tensor([s["input_ids"]]), labels=torch.tensor([s["labels"]]),
                          use_cache=False).loss * sum(label != IGNORE for label in s["labels"][1:])
                for s in samples)
    count = sum(sum(label != IGNORE for label in s["labels"][1:]) for s in samples)
    (total / count).backward()

    fast = copy.deepcopy(reference)
    fast.zero_grad()
    fast.set_attn_implementation(attention.register())
    assert head.install(fast)
    batch = RowCollator(tiny_tok.pad_token_id, layout="flat")(samples)
    assert batch["input_ids"].shape == (1, sum(len(s["input_ids"]) for s in samples))
    loss = fast(**batch, fused_head_loss=True).loss
    loss.backward()

    torch.testing.assert_close(loss, total / count, rtol=1e-5, atol=1e-6)
    for (name, want), got in zip(reference.named_parameters(), fast.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("make", [tiny_gemma2, tiny_gemma3], ids=["gemma2", "gemma3"])
def test_varlen_with_padding_or_cache_is_dense_attention(make, tiny_tok):
    eager = make(len(tiny_tok))
    varlen = copy.deepcopy(eager)
    varlen.set_attn_implementation(attention.register())
    tiny_tok.padding_side = "left"
    texts = [s["input_ids"][:12] for s in _conversations(tiny_tok, 2)] + [[5, 6, 7]]
    width = max(map(len, texts))
    ids = torch.tensor([[tiny_tok.pad_token_id] * (width - len(t)) + t for t in texts])
    mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in texts])
    with torch.no_grad():
        want, got = (m(input_ids=ids, attention_mask=mask).logits for m in (eager, varlen))
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)
    generate = dict(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                    pad_token_id=tiny_tok.pad_token_id)
    assert torch.equal(varlen.generate(**generate), eager.generate(**generate))


@pytest.mark.parametrize("method", ["ptuning", "qlora"])
def test_fused_head_through_peft_wrappers_equals_the_models_own_loss(method, tiny_tok, tiny_model_dir):
    """The trainer passes ``fused_head_loss=True`` through PEFT (prompt learning adds virtual tokens and
    pads the labels; QLoRA's head stays a plain Linear): same loss and gradients as the model's own."""
    from fatune.config import load_config
    from fatune.methods import get_method
    from fatune.methods.qlora import quantization_config
    from fatune.models import load_model

    cfg = load_config(None, [f"method.name={method}", "method.dropout=0"]).method  # no random masks: two passes compared
    quant = quantization_config(cfg) if cfg.load_in_4bit else None
    torch.manual_seed(0)
    model = get_method(method).apply(load_model(str(tiny_model_dir), quantization_config=quant), cfg, tokenizer=tiny_tok)
    assert head.install(model.get_base_model())
    batch = RowCollator(tiny_tok.pad_token_id, layout="masked")(_conversations(tiny_tok, 2))
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    losses, grads = [], []
    for fused in (False, True):
        loss = model(**batch, fused_head_loss=fused).loss
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, trained))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
