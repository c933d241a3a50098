"""Export: merged LoRA/QLoRA equal adapter + base; P-Tuning ships its adapter with a README."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from fatune.export import export
from fatune.generation import load

IDS = [[2, 4, 40, 41, 42, 43, 5, 44, 4, 45, 46]]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_merged_export_equals_adapter_plus_base(tiny_runs, tmp_path, method):
    out = export(tiny_runs[method], tmp_path / "export")
    assert not list(out.glob("adapter_*")) and (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # a plain fp32 model, servable by vLLM/TGI/llama.cpp
    merged = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    adapter = load(str(tiny_runs[method])).model  # adapter + base (4-bit for qlora), as trained
    ids = torch.tensor(IDS)
    with torch.no_grad():
        expected, got = adapter(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-4), (expected - got).abs().max()
    assert json.loads((out / "fatune.json").read_text())["merged_from"] == method


def test_ptuning_exports_its_adapter_with_a_readme(tiny_runs, tmp_path):
    out = export(tiny_runs["ptuning"], tmp_path / "export")
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    readme = (out / "README.md").read_text()
    assert "needs peft or fatune" in readme and "use_cache=False" in readme
    assert load(str(out)).loaded.is_prompt_learning  # fatune loads the export directly


@pytest.mark.parametrize("method", ["embed_head", "full"])
def test_full_model_runs_export_as_they_are(tiny_runs, tmp_path, method):
    out = export(tiny_runs[method], tmp_path / "export")
    original = tiny_runs[method] / "final"
    assert (out / "model.safetensors").read_bytes() == (original / "model.safetensors").read_bytes()


def test_merging_ptuning_is_refused(tiny_runs, tmp_path):
    from fatune.errors import FatuneError

    with pytest.raises(FatuneError, match="cannot be merged"):
        export(tiny_runs["ptuning"], tmp_path / "export", merge=True)


def test_qlora_settings_of_the_run_are_used_to_reload_its_base(tiny_model_dir, tmp_path):
    from conftest import tiny_train_config

    from fatune import train

    result = train(tiny_train_config(tiny_model_dir, tmp_path / "run", "qlora", "train.max_steps=1",
                                     "method.double_quant=true", "method.quant_type=fp4"))
    model = load(str(result.out))
    state = model.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.quant_state
    assert state.quant_type == "fp4" and state.nested
