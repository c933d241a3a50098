"""The fused LM head in half precision and under autocast, its loss-only evaluation, and the models it declines.

References are computed in fp64 from the same half-precision operands the head sees (what an exact
kernel would return), and, for comparison, the way the model's own loss does it under autocast (logits
rounded to the half dtype, then an fp32 cross-entropy). ``FATUNE_TEST_DEVICE=cuda`` runs them on a GPU
(bench/gpu_check.sh does).
"""

import logging
import os

import pytest
import torch
from torch.nn import functional as F

from fatune.data import IGNORE
from fatune.training import head

DEVICE = torch.device(os.environ.get("FATUNE_TEST_DEVICE", "cpu"))
HALF = [torch.bfloat16, torch.float16]


def _batch(dtype, vocab=301, dim=64, seed=0, trained_head=False, confident=False):
    torch.manual_seed(seed)
    weight = torch.randn(vocab, dim) * 0.5
    labels = torch.randint(0, vocab, (2, 41))
    labels[torch.rand(2, 41) < 0.3] = IGNORE
    hidden = torch.randn(2, 41, dim)
    if confident:  # each position points hard at its next token: logits of ~100, losses of ~0
        nxt = labels[:, 1:].clamp(min=0)
        hidden[:, :-1] = weight[nxt] * (100 / (weight[nxt] ** 2).sum(-1, keepdim=True))
    hidden = hidden.to(DEVICE, dtype).requires_grad_()
    weight = weight.to(DEVICE, dtype).requires_grad_(trained_head)
    return hidden, weight, labels.to(DEVICE)


def _exact(hidden, weight, labels, softcap):
    """fp64 loss sum and gradients from the same half-precision operands."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    logits = h[:, :-1] @ w.T
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE,
                           reduction="sum")
    loss.backward()
    return loss, h.grad, w.grad


def _model_style(hidden, weight, labels, softcap):
    """What a model's own loss computes under autocast: half-precision logits, fp32 cross-entropy."""
    logits = (hidden[:, :-1] @ weight.T).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE,
                           reduction="sum")


def _rel(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("trained_head", [False, True], ids=["frozen_head", "trained_head"])
def test_half_precision_matches_exact_logits(dtype, softcap, trained_head, monkeypatch):
    monkeypatch.setattr(head, "VOCAB_TILE", 64)  # several tiles and a ragged last one
    hidden, weight, labels = _batch(dtype, trained_head=trained_head)
    want_loss, want_h, want_w = _exact(hidden, weight, labels, softcap)
    total, count = head.fused_head_loss_sum(hidden, weight, labels, softcap, chunk_tokens=16)
    assert total.dtype == torch.float32 and count == (labels[:, 1:] != IGNORE).sum()
    total.backward()
    assert hidden.grad.dtype == dtype
    assert abs(total.item() - want_loss.item()) / want_loss.item() < 2e-3
    assert _rel(hidden.grad, want_h) < 2e-2
    if trained_head:
        assert weight.grad.dtype == dtype and _rel(weight.grad, want_w) < 2e-2


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("trained_head", [False, True], ids=["frozen_head", "trained_head"])
def test_confident_tokens_under_autocast_are_never_negative(softcap, trained_head):
    """The bug this guards: target logit in fp32 but log-sum-exp from bf16 logits gave 2.09 vs 0.0."""
    hidden, weight, labels = _batch(torch.float32, trained_head=trained_head, confident=True)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        total, count = head.fused_head_loss_sum(hidden, weight, labels, softcap)
        model_style = _model_style(hidden, weight, labels, softcap)
    total.backward()
    assert total.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    rounded = (hidden.detach().bfloat16(), weight.detach().bfloat16())  # autocast's operands
    want_loss, want_h, _ = _exact(*rounded, labels, softcap)
    assert total.item() >= 0
    # At least as accurate as the model's own autocast loss, and close to exact per token.
    assert abs(total.item() - want_loss.item()) <= abs(model_style.item() - want_loss.item()) + 1e-4
    assert abs(total.item() - want_loss.item()) / count.item() < 1e-3
    assert (hidden.grad.double() - want_h).abs().max().item() < 1e-2


@pytest.mark.parametrize("trained_head", [False, True], ids=["frozen_head", "trained_head"])
def test_autocast_matches_exact_logits_of_the_cast_operands(trained_head):
    hidden, weight, labels = _batch(torch.float32, trained_head=trained_head, seed=3)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        total, _ = head.fused_head_loss_sum(hidden, weight, labels, 30.0)
    total.backward()
    want_loss, want_h, want_w = _exact(hidden.detach().bfloat16(), weight.detach().bfloat16(), labels, 30.0)
    assert abs(total.item() - want_loss.item()) / want_loss.item() < 2e-3
    assert _rel(hidden.grad, want_h) < 2e-2
    if trained_head:
        assert weight.grad.dtype == torch.float32 and _rel(weight.grad, want_w) < 2e-2


@pytest.mark.parametrize("base", [torch.float32, torch.bfloat16], ids=["fp32_base", "bf16_base"])
def test_trained_rows_under_autocast_match_exact_logits_of_the_cast_operands(base):
    """embed_head's rows (and lora's chat tokens): fp32 rows spliced into a frozen matrix, stored in fp32 or, as
    bf16 training stores a frozen base, in bf16; their gradient is fp32 and as accurate as a trained head's."""
    hidden, weight, labels = _batch(torch.float32, seed=3)
    some_targets = labels[labels != IGNORE][:6]  # rows that are targets, and rows that are not
    index = torch.cat([some_targets, torch.tensor([0, 150, 300], device=DEVICE)]).unique()
    rows = (torch.randn(len(index), weight.shape[1], device=DEVICE) * 0.5).requires_grad_()
    with torch.no_grad():
        spliced = weight.to(base).index_copy(0, index, rows.to(base))
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        total, _ = head.fused_head_loss_sum(hidden, spliced, labels, 30.0, rows=(index, rows))
    total.backward()
    want_loss, want_h, want_w = _exact(hidden.detach().bfloat16(), spliced.bfloat16(), labels, 30.0)
    assert abs(total.item() - want_loss.item()) / want_loss.item() < 2e-3
    assert _rel(hidden.grad, want_h) < 2e-2
    assert rows.grad.dtype == torch.float32 and _rel(rows.grad, want_w[index]) < 2e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_no_grad_computes_the_loss_only(dtype, monkeypatch):
    """Evaluation of a trained head (embed_head rows=all, full) must not build a weight gradient."""
    hidden, weight, labels = _batch(dtype, trained_head=True)
    with_grads = head.fused_head_loss_sum(hidden, weight, labels, 30.0)[0]

    def refuse(*args, **kwargs):
        raise AssertionError("a gradient pass ran under torch.no_grad()")

    monkeypatch.setattr(head, "_trained_head_chunk", refuse)
    monkeypatch.setattr(head.FusedHeadLoss, "apply", refuse)
    with torch.no_grad():
        loss_only = head.fused_head_loss_sum(hidden, weight, labels, 30.0)[0]
    assert loss_only.grad_fn is None
    torch.testing.assert_close(loss_only, with_grads.detach(), rtol=1e-5, atol=1e-4)


def _tiny(model_type, tie=False):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=tie)
    if model_type == "granite":
        config.logits_scaling = 4.0
    if model_type == "cohere":
        config.logit_scale = 0.25
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(DEVICE)


def _own_and_fused(model):
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (2, 19), device=DEVICE)
    labels = ids.clone()
    labels[:, :5] = IGNORE
    own = model(input_ids=ids, labels=labels).loss
    hidden = getattr(model, model.base_model_prefix)(input_ids=ids).last_hidden_state
    softcap = getattr(model.config, "final_logit_softcapping", None)
    total, count = head.fused_head_loss_sum(hidden, model.get_output_embeddings().weight, labels, softcap)
    return own, total / count


@pytest.mark.parametrize("model_type", sorted(head.MODEL_TYPES - {"gemma3_text"}) + ["gemma3_text"])
def test_allowed_model_types_reproduce_their_own_loss(model_type):
    model = _tiny(model_type)
    own, fused = _own_and_fused(model)
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-6)
    assert head.install(model)


@pytest.mark.parametrize("model_type", ["granite", "cohere"])
def test_models_that_scale_their_logits_keep_their_own_loss(model_type, caplog):
    model = _tiny(model_type)
    own, fused = _own_and_fused(model)
    assert abs(own.item() - fused.item()) > 1e-3  # what installing would have trained on
    with caplog.at_level(logging.WARNING, logger="fatune.training.head"):
        assert not head.install(model)
    assert f"model type '{model_type}'" in caplog.text and not hasattr(model, "_fatune_fused_head")


def test_deepspeed_zero3_keeps_the_models_own_loss(monkeypatch, caplog):
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    with caplog.at_level(logging.WARNING, logger="fatune.training.head"):
        assert not head.install(_tiny("llama"))
    assert "ZeRO-3" in caplog.text


@pytest.mark.parametrize("model_type", ["gemma3_text", "gemma2"])  # gemma2: soft-capped logits
def test_peft_trainable_tokens_are_scored_and_trained_through_the_fused_head(model_type):
    """lora's method.chat_tokens wraps the tied head in PEFT's trainable tokens: the fused head must use the
    wrapper's spliced weight, giving the model's own loss and the same gradient on the trained rows."""
    from peft import LoraConfig, get_peft_model

    def wrapped():
        torch.manual_seed(0)
        model = get_peft_model(_tiny(model_type, tie=True), LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM",
                                                                 trainable_token_indices=[3, 7]))
        delta = model.get_base_model().get_input_embeddings().token_adapter.trainable_tokens_delta["default"]
        with torch.no_grad():
            delta.add_(torch.randn_like(delta))  # trained rows that differ from the frozen ones
        return model, delta

    ids = torch.tensor([[1, 3, 7, 9, 3, 11, 7, 3]], device=DEVICE)
    labels = ids.clone()
    labels[0, :2] = IGNORE
    own_model, own_delta = wrapped()
    own = own_model(input_ids=ids, labels=labels).loss
    own.backward()
    fused_model, fused_delta = wrapped()
    assert head.install(fused_model.get_base_model())
    fused = fused_model(input_ids=ids, labels=labels, fused_head_loss=True).loss
    fused.backward()
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_delta.grad, own_delta.grad, rtol=1e-4, atol=1e-6)
    # The frozen matrix gets no gradient buffer: only the two trained rows do.
    assert fused_model.get_base_model().get_output_embeddings().token_adapter.base_layer.weight.grad is None
