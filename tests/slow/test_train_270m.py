"""Two LoRA steps on the real Gemma 3 270M from PyPI, through the shipped demo config."""

import json
from pathlib import Path

import pytest

from fatune import train
from fatune.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_two_lora_steps_on_the_real_270m(tmp_path):
    config = load_config(ROOT / "configs/demo/lora.yaml", [
        "train.max_steps=2", "train.save_steps=2", "train.eval_steps=2", "data.max_length=128", "eval.max_rows=2",
        f"output.dir={tmp_path / 'run'}"])
    result = train(config)
    summary = json.loads((result.out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["method"] == "lora"
    assert summary["precision"] in ("fp32", "bf16")  # the demo's auto: bf16 on CPUs with fast native bf16
    assert summary["final_train_loss"] < 20 and summary["final_eval_loss"] < 20  # finite, and a real LM
    assert 1e6 < summary["trainable_params"] < 3e6  # r=8 on all seven projections of 18 layers
    assert (result.out / "final" / "adapter_model.safetensors").exists()
