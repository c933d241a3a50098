"""``bench/gpu_check.sh`` and its helpers, checked on a CPU: the 2B-shaped model builder (one layer and a
small vocabulary, not the full 2.6B), a run's record and epoch projection, and the script's syntax and
its refusal to run without CUDA. The GPU steps themselves need a GPU."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_random_gemma2_2b_has_gemma2_2b_shape(tmp_path, tiny_tok, tiny_tok_dir):
    import torch

    from fatune.bench.gpu_check import random_gemma2_2b
    from fatune.models import load_model, load_model_config, load_tokenizer

    path = random_gemma2_2b(tmp_path / "model", layers=1, vocab=len(tiny_tok), tokenizer=str(tiny_tok_dir))
    config = load_model_config(str(path))
    shape = (config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads,
             config.head_dim, config.query_pre_attn_scalar, config.attn_logit_softcapping,
             config.final_logit_softcapping, config.sliding_window)
    assert shape == (2304, 9216, 8, 4, 256, 256, 50.0, 30.0, 4096)
    assert (config.num_hidden_layers, config.vocab_size, config.model_type) == (1, len(tiny_tok), "gemma2")
    assert len(load_tokenizer(str(path))) == len(tiny_tok)  # the tokenizer sits beside the weights
    model = load_model(str(path))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[2, 10, 11]])).logits
    assert logits.shape == (1, 3, len(tiny_tok)) and torch.isfinite(logits).all()
    assert logits.abs().max() <= 30.0  # the final soft-capping


def test_random_gemma2_2b_refuses_a_vocabulary_smaller_than_the_tokenizer(tmp_path, tiny_tok_dir):
    from fatune.bench.gpu_check import random_gemma2_2b
    from fatune.errors import FatuneError

    with pytest.raises(FatuneError, match="--vocab 100"):
        random_gemma2_2b(tmp_path / "model", layers=1, vocab=100, tokenizer=str(tiny_tok_dir))


def test_record_projects_one_epoch_of_the_seed_data(tmp_path):
    from fatune.bench.gpu_check import SLIMORCA_CONVERSATIONS, TOKENS_PER_CONVERSATION, record

    (tmp_path / "train_summary.json").write_text(json.dumps({
        "method": "qlora", "precision": "bf16", "optimizer": "paged_adamw_8bit", "steps": 20, "train_seconds": 40.0,
        "tokens_seen": 160_000, "tokens_per_second": 4000.0, "peak_memory_bytes": 6e9, "trainable_params": 10,
        "final_train_loss": 12.0}))
    config = {"data": {"val_ratio": 0.1, "fraction": None, "max_length": 1024},
              "train": {"batch_size": 2, "grad_accum": 4}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = record(tmp_path)
    tokens = SLIMORCA_CONVERSATIONS * 0.9 * TOKENS_PER_CONVERSATION  # ~23.8 M
    assert result["seconds_per_step"] == 2.0 and result["rows_per_step"] == 8
    assert result["epoch_tokens"] == round(tokens) and 23e6 < tokens < 24.5e6
    assert result["projected_epoch_hours"] == round(tokens / 4000 / 3600, 2)
    config["data"]["fraction"] = 0.2  # embed_head trains on a fifth of the data
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert record(tmp_path)["epoch_tokens"] == round(tokens * 0.2)


def test_gpu_check_script_parses_and_stops_without_cuda(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 1 and "no CUDA device" in done.stderr
