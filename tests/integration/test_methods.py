"""Each method on a tiny Gemma 2, without a trainer: 3 AdamW steps on one repeated batch must lower the
loss, change exactly the intended parameters and leave every frozen parameter bit-identical.
(embed_head has its own, deeper tests in tests/unit/test_embed_head.py.)"""

import pytest
import torch

from fatune.config import load_config
from fatune.data import load_conversations, render_batch
from fatune.data.pack import unpacked
from fatune.methods import get_method
from fatune.training.collator import RowCollator


def batch(tok, n=2):
    conversations = list(load_conversations("fatune:sample"))[:n]
    rows = unpacked(render_batch(conversations, tok, "gemma"))
    return RowCollator(tok.pad_token_id, layout="masked")(rows)


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def run_steps(model, inputs, steps=3, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def base_model(tiny_model_dir, method_cfg):
    from fatune.methods.qlora import quantization_config
    from fatune.models import load_model

    quant = quantization_config(method_cfg) if method_cfg.load_in_4bit else None
    return load_model(str(tiny_model_dir), quantization_config=quant)


@pytest.mark.parametrize("name, trained", [
    ("lora", lambda n: "lora_" in n or "trainable_tokens_delta" in n),  # + the chat tokens' rows
    ("qlora", lambda n: "lora_" in n or "trainable_tokens_delta" in n),
    ("ptuning", lambda n: "prompt_encoder" in n),
    ("full", lambda n: True),
])
def test_intended_parameters_change_and_frozen_ones_stay_identical(tiny_model_dir, tiny_tok, name, trained):
    cfg = load_config(None, [f"method.name={name}"]).method
    model = get_method(name).apply(base_model(tiny_model_dir, cfg), cfg, tokenizer=tiny_tok)
    before = snapshot(model)
    losses = run_steps(model, batch(tiny_tok))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    intended = {n for n, p in model.named_parameters() if p.requires_grad}
    assert intended and all(trained(n) for n in intended)
    if name in ("lora", "qlora"):  # LoRA A matrices may barely move in 3 steps; every B starts at 0 and must
        assert {n for n in intended if "lora_B" in n} <= changed
    else:
        assert changed == intended
    assert not changed - intended  # every frozen parameter is bit-identical
    if name in ("lora", "qlora"):  # method.chat_tokens: the turn tokens' rows train, tied to the head
        assert any("trainable_tokens_delta" in n for n in changed)
    report = get_method(name).report(model)
    assert 0 < report["trainable_params"] < report["total_params"] or name == "full"


def test_qlora_base_is_real_bitsandbytes_4bit(tiny_model_dir, tiny_tok):
    import bitsandbytes as bnb

    cfg = load_config(None, ["method.name=qlora", "method.double_quant=true"]).method
    model = get_method("qlora").apply(base_model(tiny_model_dir, cfg), cfg)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    assert q_proj.base_layer.weight.quant_state.nested  # double quantization
    report = get_method("qlora").report(model)
    full = sum(p.numel() for p in base_model(tiny_model_dir, load_config(None, []).method).parameters())
    assert report["total_params"] == full + report["trainable_params"]  # 4-bit weights counted at real size


def test_ptuning_with_gradient_checkpointing_trains_the_prompt_encoder(tiny_model_dir, tiny_tok):
    cfg = load_config(None, ["method.name=ptuning"]).method
    model = get_method("ptuning").apply(base_model(tiny_model_dir, cfg), cfg)
    model.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    model(**batch(tiny_tok)).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "prompt_encoder" in n and p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_qlora_keeps_gradients_through_the_base_after_an_evaluation(tiny_model_dir, tiny_tok):
    # bitsandbytes 0.50 repacks 4-bit weights for CPU inference at the first no-grad eval forward
    # (on CPUs with AVX512-BF16), and the repacked kernel has no backward; qlora.keep_training_layout stops it.
    cfg = load_config(None, ["method.name=qlora"]).method
    model = get_method("qlora").apply(base_model(tiny_model_dir, cfg), cfg)
    inputs = batch(tiny_tok)
    model.eval()
    with torch.no_grad():
        model(**inputs)
    model.train()
    model(**inputs).loss.backward()
    first_layer = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B.default.weight  # reached only through the base
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0
