"""fatune.train end to end on a tiny Gemma 2: every method writes a run dir whose final/ reloads with
plain transformers/peft and gives the same logits as the model in memory."""

import json

import pytest
import torch
import yaml
from conftest import tiny_train_config

from fatune import train
from fatune.errors import FatuneError

SUMMARY_KEYS = {"method", "base_model", "trainable_params", "total_params", "train_seconds", "tokens_seen",
                "tokens_per_second", "peak_memory_bytes", "final_train_loss", "final_eval_loss", "train_examples",
                "world_size", "device", "versions"}


def reload_final(final, tiny_model_dir, method):
    from transformers import AutoModelForCausalLM

    if method in ("embed_head", "full"):
        return AutoModelForCausalLM.from_pretrained(final, attn_implementation="eager")
    from peft import PeftModel

    kwargs = {}
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                            bnb_4bit_compute_dtype=torch.float32), "device_map": "cpu"}
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager", **kwargs)
    if method == "qlora":  # compare in the exact layout training used (see qlora.keep_training_layout)
        from fatune.methods.qlora import keep_training_layout

        keep_training_layout(base)
    return PeftModel.from_pretrained(base, final)


@pytest.mark.parametrize("method, extra", [
    ("lora", []), ("qlora", []), ("ptuning", []), ("full", []),
    ("embed_head", []), ("embed_head", ["method.rows=persian"]),
])
def test_method_trains_and_final_reloads_with_the_same_logits(tmp_path, tiny_model_dir, tiny_tok, method, extra):
    result = train(tiny_train_config(tiny_model_dir, tmp_path / "run", method, *extra))
    out = result.out
    summary = json.loads((out / "train_summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and summary["method"] == method and summary["world_size"] == 1
    assert summary["steps"] == 4 and summary["device"] == "cpu" and summary["tokens_seen"] > 0
    assert 0 < summary["trainable_params"] <= summary["total_params"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and all(map(torch.isfinite, torch.tensor(losses)))
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "config.yaml").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert list((out / "tensorboard").iterdir())
    final = out / "final"
    meta = json.loads((final / "fatune.json").read_text())
    assert meta["method"] == method and meta["template"] == "gemma"
    assert (final / "tokenizer_config.json").exists() and (final / "chat_template.jinja").exists()

    ids = torch.tensor([tiny_tok("<bos><start_of_turn>user\nسلام<end_of_turn>\n<start_of_turn>model\n",
                                 add_special_tokens=False)["input_ids"]])
    trained = result.model.eval()
    reloaded = reload_final(final, tiny_model_dir, method).eval()
    with torch.no_grad():
        expected, got = trained(input_ids=ids).logits, reloaded(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-5), (expected - got).abs().max()
    if method == "embed_head":
        model = reloaded
        assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # still tied
        assert summary["tied"] is True
    _check_last_checkpoint_loads_as_final(out, method, extra, ids)


def _check_last_checkpoint_loads_as_final(out, method, extra, ids):
    """A checkpoint loads for generation and eval (learning curves: `fatune eval RUN/checkpoints/step-N`)
    and computes what final/ computes; embed_head on a subset of rows keeps its rows apart until final/."""
    from fatune import load

    checkpoint = out / "checkpoints" / "step-4"
    if extra == ["method.rows=persian"]:
        assert not (checkpoint / "fatune.json").exists()
        return
    assert json.loads((checkpoint / "fatune.json").read_text()) == json.loads((out / "final" / "fatune.json").read_text())
    with torch.no_grad():
        expected = load(str(out)).model(input_ids=ids).logits
        got = load(str(checkpoint)).model(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-5), (method, (expected - got).abs().max())


def test_embed_head_persian_rows_leave_other_rows_identical(tmp_path, tiny_model_dir, tiny_tok):
    from transformers import AutoModelForCausalLM

    from fatune.methods.embed_head import persian_token_ids

    result = train(tiny_train_config(tiny_model_dir, tmp_path / "run", "embed_head", "method.rows=persian"))
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_input_embeddings().weight
    after = AutoModelForCausalLM.from_pretrained(result.out / "final").get_input_embeddings().weight
    persian = torch.zeros(before.shape[0], dtype=torch.bool)
    persian[persian_token_ids(tiny_tok)] = True
    assert torch.equal(before[~persian], after[~persian])
    assert not torch.equal(before[persian], after[persian])
    assert result.summary["trainable_params"] == int(persian.sum()) * before.shape[1]


@pytest.fixture(scope="module")
def untied_gemma3_dir(tiny_tok, tmp_path_factory):
    from fatune.testing import tiny_gemma3

    path = tmp_path_factory.mktemp("untied_gemma3")
    tiny_gemma3(len(tiny_tok), tie_word_embeddings=False).save_pretrained(path)
    tiny_tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("base", ["tied_gemma2", "untied_gemma3"])
def test_embed_head_rows_train_the_same_with_and_without_the_fused_head(tmp_path, tiny_model_dir, untied_gemma3_dir,
                                                                        monkeypatch, base):
    """train.fused_head on a row subset scores with the rows spliced into the head's weight (no full logits): the
    same per-step and evaluation losses as the hooks over full logits, and a final/ that loads the same."""
    from transformers import AutoModelForCausalLM

    from fatune.methods import embed_head

    spliced = []
    original = embed_head.fused_head_weight
    monkeypatch.setattr(embed_head, "fused_head_weight", lambda model: spliced.append(1) or original(model))
    model_dir = tiny_model_dir if base == "tied_gemma2" else untied_gemma3_dir
    losses, finals = {}, {}
    for fused in (True, False):
        calls = len(spliced)
        result = train(tiny_train_config(model_dir, tmp_path / str(fused), "embed_head", "method.rows=persian",
                                         f"train.fused_head={str(fused).lower()}"))
        assert (len(spliced) > calls) == fused  # the fused head took the rows, not the fallback
        rows = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
        losses[fused] = [r[key] for r in rows for key in ("loss", "eval_loss") if key in r]
        final, info = AutoModelForCausalLM.from_pretrained(result.out / "final", output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert (final.get_output_embeddings().weight is final.get_input_embeddings().weight) == (base == "tied_gemma2")
        finals[fused] = final.eval()
    assert len(losses[True]) == 4 + 2
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-5, atol=0)
    ids = torch.tensor([list(range(3, 40))])
    with torch.no_grad():
        torch.testing.assert_close(finals[True](input_ids=ids).logits, finals[False](input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_ptuning_trains_unpacked_so_every_conversation_sees_the_virtual_tokens(tmp_path, tiny_model_dir, tiny_tok):
    from fatune.data.prepare import prepare

    config = tiny_train_config(tiny_model_dir, tmp_path / "run", "ptuning")
    assert config.data.packing is False
    prepared = prepare(config, tiny_tok)
    assert all(len(lengths) == 1 for lengths in prepared.train["seq_lengths"])  # one conversation per row
    with pytest.raises(FatuneError, match="data.packing: ptuning trains unpacked"):
        tiny_train_config(tiny_model_dir, tmp_path / "run", "ptuning", "data.packing=true")


def test_finished_run_is_not_overwritten_without_the_flag(tmp_path, tiny_model_dir):
    config = tiny_train_config(tiny_model_dir, tmp_path / "run", "lora", "train.max_steps=2")
    train(config)
    stamp = (tmp_path / "run" / "train_summary.json").read_text()
    with pytest.raises(FatuneError, match="holds a finished run; pass --overwrite"):
        train(config)
    assert (tmp_path / "run" / "train_summary.json").read_text() == stamp
    train(config, overwrite=True)
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["steps"] == 2


def test_a_second_run_on_the_same_dir_is_refused_by_the_lock(tmp_path, tiny_model_dir):
    from fatune.training.rundir import RunLock

    with RunLock(tmp_path / "run"):
        with pytest.raises(FatuneError, match="another fatune run is using this output dir"):
            train(tiny_train_config(tiny_model_dir, tmp_path / "run", "lora"))


def test_resuming_a_different_experiment_is_refused(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    train(tiny_train_config(tiny_model_dir, out, "lora", "train.max_steps=2"))
    (out / "train_summary.json").unlink()  # pretend it died after its checkpoint
    with pytest.raises(FatuneError, match=r"unfinished run with a different config \(method.r\)"):
        train(tiny_train_config(tiny_model_dir, out, "lora", "train.max_steps=4", "method.r=4"))
    assert yaml.safe_load((out / "config.yaml").read_text())["method"]["r"] == 8


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    config = tiny_train_config(tiny_model_dir, out, "full", "train.max_steps=6", "train.save_steps=1",
                               "train.learning_rate=1e30", "train.max_grad_norm=1e30")
    with pytest.raises(FatuneError, match="the training loss became (nan|inf) at step"):
        train(config)
    assert not (out / "train_summary.json").exists() and not (out / "final").exists()
    assert (out / "checkpoints" / "step-1").exists()


def test_a_dataset_too_small_for_a_validation_split_still_trains(tmp_path, tiny_model_dir):
    from conftest import CONVERSATION, write_jsonl

    data = write_jsonl(tmp_path / "one.jsonl", [CONVERSATION])
    result = train(tiny_train_config(tiny_model_dir, tmp_path / "run", "lora", f"data.path={data}",
                                     "train.max_steps=2", "data.val_ratio=0.1"))
    assert result.summary["final_eval_loss"] is None and result.summary["steps"] == 2
