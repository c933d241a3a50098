"""Untrusted files: weights load from safetensors only. A model directory whose weights are pickle files only
is refused in one line naming the file and the flag, unless the user allows pickles (``--allow-pickle``,
``model.allow_pickle: true``); nothing is loaded with ``trust_remote_code``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import CONVERSATION, write_jsonl

import fatune.models as models
from fatune.errors import FatuneError

SRC = Path(models.__file__).resolve().parent


@pytest.fixture(scope="module")
def pickle_model_dir(tiny_tok, tmp_path_factory):
    """A tiny Gemma 2 saved the pre-safetensors way: ``pytorch_model.bin`` (a torch pickle), config, tokenizer.
    transformers 5 saves safetensors only, so the pickle is written with torch.save, as old checkpoints were."""
    import torch

    from fatune.testing import tiny_gemma2

    path = tmp_path_factory.mktemp("pickle_model")
    model = tiny_gemma2(len(tiny_tok))
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    tiny_tok.save_pretrained(path)
    return path, {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_a_pickle_only_model_is_refused_in_one_line(pickle_model_dir):
    path, _ = pickle_model_dir
    with pytest.raises(FatuneError) as error:
        models.load_model(str(path))
    message = str(error.value)
    assert "\n" not in message
    assert str(path / "pytorch_model.bin") in message and "--allow-pickle" in message
    assert "model.allow_pickle" in message


def test_allowed_pickles_load_the_same_weights(pickle_model_dir):
    import torch

    path, reference = pickle_model_dir
    for model in (models.load_model(str(path), allow_pickle=True), _load_inside_pickle_allowed(path)):
        state = model.state_dict()
        assert set(state) == set(reference)
        assert all(torch.equal(state[name], reference[name]) for name in reference)


def _load_inside_pickle_allowed(path):
    with models.pickle_allowed():
        model = models.load_model(str(path))
    with pytest.raises(FatuneError):  # the permission ends with the block
        models.load_model(str(path))
    return model


def test_safetensors_beside_a_pickle_win_and_need_no_flag(tiny_model_dir, tmp_path):
    import shutil

    path = Path(shutil.copytree(tiny_model_dir, tmp_path / "both"))
    (path / "pytorch_model.bin").write_bytes(b"not even a pickle: never opened")
    models.refuse_pickle_only(path)  # no error: safetensors are there
    model = models.load_model(str(path))
    assert model.config.model_type == "gemma2"


def test_models_load_with_use_safetensors(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    calls = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *args, **kwargs: calls.append(kwargs))
    models.load_model(str(tiny_model_dir))
    models.load_model(str(tiny_model_dir), allow_pickle=True)
    assert [call["use_safetensors"] for call in calls] == [True, None]  # a hub repo with only .bin fails too
    assert not any("trust_remote_code" in call for call in calls)


def test_a_hub_repo_without_safetensors_is_one_sentence(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    def no_safetensors(*args, **kwargs):  # transformers' own message for such a repo
        raise OSError("someone/old-model does not appear to have a file named model.safetensors or "
                      "model.safetensors.index.json and thus cannot be loaded with `safetensors`.")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_safetensors)
    with pytest.raises(FatuneError, match=r"no safetensors weights .* --allow-pickle"):
        models.load_model(str(tiny_model_dir))


def test_the_cli_refuses_and_allows(pickle_model_dir, tmp_path, capsys):
    from fatune.cli import main

    path, _ = pickle_model_dir
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": CONVERSATION["messages"][:2]}])
    args = ["generate", str(path), "--prompts", str(prompts), "--out", str(tmp_path / "out.jsonl"),
            "--max-new-tokens", "2", "--template", "gemma"]
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fatune: error:")]
    assert len(errors) == 1 and "pytorch_model.bin" in errors[0] and "--allow-pickle" in errors[0]
    assert not (tmp_path / "out.jsonl").exists()
    assert main([*args, "--allow-pickle"]) == 0
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 1
    assert not models._pickle_ok  # the permission was for that command only


def test_model_allow_pickle_reaches_training(monkeypatch, tmp_path):
    import fatune
    import fatune.training as training
    from fatune.config import load_config

    seen = []
    monkeypatch.setattr(training, "train", lambda config, overwrite=False: seen.append(models._pickle_ok))
    fatune.train(load_config(None, [f"output.dir={tmp_path}"]))
    fatune.train(load_config(None, [f"output.dir={tmp_path}", "model.allow_pickle=true"]))
    assert seen == [False, True] and not models._pickle_ok


def test_train_allow_pickle_flag_is_the_config_field(monkeypatch, tmp_path):
    import fatune
    from fatune.cli import main

    configs = []

    class Result:
        out = tmp_path

    monkeypatch.setattr(fatune, "train", lambda config, overwrite=False: configs.append(config) or Result())
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"output:\n  dir: {tmp_path}\n")
    assert main(["train", str(config_file)]) == 0
    assert main(["train", str(config_file), "--allow-pickle"]) == 0
    # the flag is the config field, so the run's config.yaml records it and a resume keeps it
    assert [config.model.allow_pickle for config in configs] == [False, True]


def test_nothing_is_loaded_with_remote_code():
    """``trust_remote_code=True`` runs a repository's Python on load; fatune never passes it."""
    hits = [f"{file.relative_to(SRC)}:{number}" for file in sorted(SRC.rglob("*.py"))
            for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"trust_remote_code\s*=\s*True", line)]
    assert hits == [], f"trust_remote_code=True in {hits}"


def test_a_pickle_only_adapter_is_refused_and_allowed(tiny_model_dir, tmp_path):
    """A PEFT adapter directory with ``adapter_model.bin`` alone: refused by ``fatune.load`` (chat, generate, eval)
    unless pickles are allowed, and then its LoRA weights are the saved ones."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from fatune.generation import load

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    adapter = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    path = tmp_path / "adapter"
    adapter.save_pretrained(path)
    reference = load_file(str(path / "adapter_model.safetensors"))
    torch.save(reference, path / "adapter_model.bin")
    (path / "adapter_model.safetensors").unlink()

    with pytest.raises(FatuneError, match=r"adapter_model\.bin: pickle weights .* --allow-pickle"):
        load(str(path), template="gemma")
    with models.pickle_allowed():
        loaded = load(str(path), template="gemma")
    state = {name: tensor for name, tensor in loaded.model.state_dict().items() if "lora_" in name}
    assert len(state) == len(reference) > 0
    for name, tensor in reference.items():  # saved "…lora_A.weight", loaded "…lora_A.default.weight"
        (match,) = [v for k, v in state.items() if k.replace(".default", "").endswith(name.split("base_model.")[-1])]
        assert torch.equal(match, tensor)
