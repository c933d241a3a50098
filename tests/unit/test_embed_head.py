"""embed_head: only the embeddings/LM head train; a row subset trains through a small parameter and hooks,
or through the fused LM head (``training.head``), which must train it as the hooks do."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from fatune.errors import FatuneError
from fatune.methods import embed_head
from fatune.testing import tiny_gemma2, tiny_gemma3

TEXT = "سلام! من یک دستیار هوش مصنوعی هستم. hello world, پایتخت ایران تهران است."


def cfg(rows):
    return SimpleNamespace(rows=str(rows))


def batch_for(tok):
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    return {"input_ids": ids, "labels": ids.clone()}


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def train_steps(model, batch, steps=3):
    """AdamW with weight decay on the trainable parameters; returns the losses before each step."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(model(**batch).loss.item())
    model.eval()
    return losses


def reload(model, path):
    from transformers import AutoModelForCausalLM

    model.save_pretrained(path)
    loaded, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return loaded.eval()


def test_all_rows_tied_trains_one_matrix(tiny_tok):
    model = tiny_gemma2(len(tok := tiny_tok))
    embed_head.apply(model, cfg("all"), tok)
    weight = model.get_input_embeddings().weight
    info = embed_head.report(model)
    assert info["tied"] and info["rows"] == "all" and info["trainable_rows"] == len(tok)
    assert info["trainable_params"] == weight.numel() == len(tok) * 64
    assert info["total_params"] == sum(p.numel() for p in model.parameters())
    before = snapshot(model)
    losses = train_steps(model, batch_for(tok))
    assert losses[-1] < losses[0]
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (p is weight), name
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert embed_head.merge(model) is model and embed_head.report(model)["trainable_params"] == weight.numel()


def test_persian_rows_train_alone_then_merge_to_plain_model(tiny_tok, tmp_path):
    model = tiny_gemma2(len(tok := tiny_tok))
    batch = batch_for(tok)
    embed_head.apply(model, cfg("persian"), tok)
    embedding = model.get_input_embeddings()
    ids = embedding.trainable_row_ids
    assert ids.tolist() == embed_head.persian_token_ids(tok)
    info = embed_head.report(model)
    assert info["tied"] and info["trainable_rows"] == len(ids) < len(tok)
    assert info["trainable_params"] == len(ids) * 64 < len(tok) * 64
    assert info["total_params"] == sum(p.numel() for p in model.parameters()) - len(ids) * 64
    before = snapshot(model)
    losses = train_steps(model, batch)
    assert losses[-1] < losses[0]
    trained = embedding.trainable_rows.detach().clone()
    used = sorted(set(batch["input_ids"][0].tolist()) & set(ids.tolist()))
    slots = torch.searchsorted(ids, torch.tensor(used))
    assert not torch.equal(trained[slots], before["model.embed_tokens.trainable_rows"][slots])
    for name, p in model.named_parameters():  # the base matrix and every layer: bit-identical
        if name != "model.embed_tokens.trainable_rows":
            assert torch.equal(p, before[name]), name
    with torch.no_grad():
        hooked = model(**batch).logits

    embed_head.merge(model)
    assert not hasattr(embedding, "trainable_rows") and not embedding._forward_hooks
    assert not model.get_output_embeddings()._forward_hooks
    loaded = reload(model, tmp_path / "merged")
    weight = loaded.get_input_embeddings().weight
    assert loaded.get_output_embeddings().weight is weight
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, hooked, atol=1e-5)
    frozen = torch.ones(len(tok), dtype=torch.bool)
    frozen[ids] = False
    assert torch.equal(weight[ids], trained)
    assert torch.equal(weight[frozen], before["model.embed_tokens.weight"][frozen])


def test_rows_from_file(tiny_tok, tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("7\n\n5\n  7 \n", encoding="utf-8")
    model = embed_head.apply(tiny_gemma2(len(tiny_tok)), cfg(path))
    assert model.get_input_embeddings().trainable_row_ids.tolist() == [5, 7]
    info = embed_head.report(model)
    assert (info["rows"], info["trainable_rows"], info["trainable_params"]) == (str(path), 2, 2 * 64)


@pytest.mark.parametrize("text, where", [("5\nabc\n", ":2: not a token id"), ("1\n\n99999\n", ":3: token id 99999")])
def test_bad_row_files_name_the_line(tiny_tok, tmp_path, text, where):
    path = tmp_path / "ids.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FatuneError, match=f"ids.txt{where}"):
        embed_head.apply(tiny_gemma2(len(tiny_tok)), cfg(path))
    with pytest.raises(FatuneError, match="no such file"):
        embed_head.apply(tiny_gemma2(len(tiny_tok)), cfg(tmp_path / "missing.txt"))


def test_persian_ids_byte_level_tokenizer(tiny_tok):
    ids = set(embed_head.persian_token_ids(tiny_tok))
    assert set(tiny_tok("سلام دنیا", add_special_tokens=False)["input_ids"]) <= ids
    assert not set(tiny_tok("hello", add_special_tokens=False)["input_ids"]) & ids
    assert set(tiny_tok.all_special_ids) <= ids


def test_persian_ids_gemma3_tokenizer(gemma_tok):
    start = time.perf_counter()
    ids = embed_head.persian_token_ids(gemma_tok)
    seconds = time.perf_counter() - start
    print(f"\nGemma 3 tokenizer: {len(ids)} Persian-script/special ids of {len(gemma_tok)} in {seconds:.2f} s")
    assert ids == sorted(set(ids)) and 1_000 < len(ids) < 60_000 and seconds < 10
    chosen = set(ids)
    assert set(gemma_tok("سلام", add_special_tokens=False)["input_ids"]) <= chosen
    assert set(gemma_tok.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"])) <= chosen
    assert set(gemma_tok.all_special_ids) <= chosen
    assert not set(gemma_tok(["hello", " hello"], add_special_tokens=False)["input_ids"][0]) & chosen


def test_gemma3_scaled_embedding_hook_is_exact(tiny_tok):
    model = tiny_gemma3(len(tiny_tok))
    embedding = model.get_input_embeddings()
    assert float(embedding.embed_scale) == 8.0  # Gemma 3 scales inside the embedding module
    input_ids = batch_for(tiny_tok)["input_ids"]
    with torch.no_grad():
        ref_embed, ref_logits = embedding(input_ids), model(input_ids).logits
    embed_head.apply(model, cfg("persian"), tiny_tok)
    with torch.no_grad():
        assert torch.equal(embedding(input_ids), ref_embed)
        assert torch.equal(model(input_ids).logits, ref_logits)
        # A changed trainable row reaches the output scaled like every other row.
        token = int(embedding.trainable_row_ids[10])
        embedding.trainable_rows[10] = 1.0
        assert torch.equal(embedding(torch.tensor([[token]]))[0, 0], torch.full((64,), 8.0))


def test_untied_model_trains_both_copies(tiny_tok, tmp_path):
    model = tiny_gemma2(len(tok := tiny_tok), tie_word_embeddings=False)
    batch = batch_for(tok)
    embed_head.apply(model, cfg("persian"), tok)
    head = model.get_output_embeddings()
    n = len(model.get_input_embeddings().trainable_row_ids)
    info = embed_head.report(model)
    assert not info["tied"] and info["trainable_params"] == 2 * n * 64
    assert info["total_params"] == sum(p.numel() for p in model.parameters()) - 2 * n * 64
    before = snapshot(model)
    losses = train_steps(model, batch)
    assert losses[-1] < losses[0]
    extras = {"model.embed_tokens.trainable_rows", "lm_head.trainable_rows_head"}
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (name in extras), name
    trained = {"embed": model.model.embed_tokens.trainable_rows.detach().clone(),
               "head": head.trainable_rows_head.detach().clone()}
    with torch.no_grad():
        hooked = model(**batch).logits
    loaded = reload(embed_head.merge(model), tmp_path / "merged")
    assert loaded.get_output_embeddings().weight is not loaded.get_input_embeddings().weight
    ids = embed_head.persian_token_ids(tok)
    frozen = torch.ones(len(tok), dtype=torch.bool)
    frozen[ids] = False
    for key, weight in [("embed", loaded.model.embed_tokens.weight), ("head", loaded.lm_head.weight)]:
        assert torch.equal(weight[ids], trained[key])
        base = before["model.embed_tokens.weight" if key == "embed" else "lm_head.weight"]
        assert torch.equal(weight[frozen], base[frozen])
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, hooked, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradient(tiny_tok):
    batch = batch_for(tiny_tok)
    grads = []
    for checkpointing in (False, True):
        model = embed_head.apply(tiny_gemma2(len(tiny_tok)), cfg("persian"), tiny_tok).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**batch).loss.backward()
        grads.append(model.get_input_embeddings().trainable_rows.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_trainer_with_checkpointing_trains_only_the_rows(tiny_tok, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = tiny_gemma2(len(tiny_tok))
    embed_head.apply(model, cfg("persian"), tiny_tok)
    base = model.get_input_embeddings().weight.detach().clone()
    rows = model.get_input_embeddings().trainable_rows.detach().clone()
    batch = batch_for(tiny_tok)
    data = Dataset.from_dict({k: [v[0].tolist()] * 4 for k, v in batch.items()})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                             weight_decay=0.1, activation_checkpointing=True, report_to=[], save_strategy="no",
                             use_cpu=True, logging_steps=1, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data).train()
    assert model.is_gradient_checkpointing
    embedding = model.get_input_embeddings()
    assert torch.equal(embedding.weight, base) and not torch.equal(embedding.trainable_rows, rows)



MODELS = {"gemma2": tiny_gemma2, "gemma3": tiny_gemma3}  # gemma2: soft-capped logits; gemma3: scaled embedding


def hooked_with_changed_rows(tok, family, tied):
    """A persian-rows model whose trainable rows differ from the frozen matrix's, as after some training, so a
    head that ignored them would give another loss."""
    model = embed_head.apply(MODELS[family](len(tok), tie_word_embeddings=tied), cfg("persian"), tok)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    return model.train()


def trained_params(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_fused_head_trains_the_rows_as_the_hooks_do(tiny_tok, family, tied):
    """``train.fused_head`` scores with the rows spliced into a copy of the matrix and takes their gradient itself:
    the same loss and row gradients (embedding side and head side) as the hooks over full logits, and an
    optimizer step moves the trained rows only."""
    from fatune.training import head

    batch = batch_for(tiny_tok)
    batch["labels"][:, :4] = -100  # untrained positions too
    own, fused = (hooked_with_changed_rows(tiny_tok, family, tied) for _ in range(2))
    assert embed_head.report(own)["tied"] is tied and head.install(fused)
    before = snapshot(fused)
    own_loss = own(**batch).loss
    fused_loss = fused(**batch, fused_head_loss=True).loss
    own_loss.backward()
    fused_loss.backward()
    torch.testing.assert_close(fused_loss, own_loss, rtol=1e-5, atol=1e-6)
    want = trained_params(own)
    got = trained_params(fused)
    assert sorted(got) == sorted(want) and len(got) == (1 if tied else 2)  # untied: lm_head.trainable_rows_head
    for name, p in got.items():
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, want[name].grad, rtol=1e-4, atol=1e-6)
    torch.optim.AdamW(got.values(), lr=1e-2, weight_decay=0.1).step()
    for name, p in fused.named_parameters():  # the frozen matrix (no gradient buffer either) and every layer
        assert torch.equal(p, before[name]) != (name in got), name
        assert (p.grad is None) != (name in got), name


def test_fused_head_still_declines_a_head_with_other_hooks(tiny_tok):
    from fatune.training import head

    model = embed_head.apply(tiny_gemma2(len(tiny_tok)), cfg("persian"), tiny_tok)
    assert head.why_not(model) is None and head.output_weight(model)[1] is not None
    model.get_output_embeddings().register_forward_hook(lambda module, args, output: output * 2)
    assert "forward hooks" in head.why_not(model)
    merged = embed_head.merge(embed_head.apply(tiny_gemma2(len(tiny_tok)), cfg("persian"), tiny_tok))
    weight, rows = head.output_weight(merged)  # no rows left apart: the head's own weight
    assert rows is None and weight is merged.get_output_embeddings().weight and head.why_not(merged) is None
