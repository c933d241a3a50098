"""bf16 mixed precision on CPU, decided once per run: frozen weights in bf16, trained weights and optimizer
state in fp32, losses that track fp32; ``auto`` follows the measured bf16 speed, records its decision and
keeps it on resume; a bf16 run loads and generates as it trained; fp16 on CPU runs (GPU configs tried out)."""

import json
import logging

import pytest
import torch
import yaml
from conftest import tiny_train_config
from safetensors import safe_open

import fatune
from fatune import train
from fatune.errors import FatuneError
from fatune.training import precision as precision_rules

METHODS = [("lora", []), ("ptuning", []), ("qlora", []), ("full", []),
           ("embed_head", []), ("embed_head", ["method.rows=persian"])]
PROMPT = [{"role": "user", "content": "سلام. تو کی هستی؟"}]


def run_id(method, extra):
    return "-".join([method, *(e.split("=")[1] for e in extra)])


@pytest.fixture(scope="module")
def bf16_runs(tiny_model_dir, tmp_path_factory):
    """One finished 3-step bf16 run per method: {id: TrainResult}."""
    root = tmp_path_factory.mktemp("bf16")
    return {run_id(m, extra): train(tiny_train_config(tiny_model_dir, root / run_id(m, extra), m, *extra,
                                                      "train.precision=bf16", "train.max_steps=3",
                                                      "train.save_steps=3", "train.eval_steps=3"))
            for m, extra in METHODS}


def step_losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def checkpoint_dtypes(checkpoint):
    """{tensor name: safetensors dtype} of the model weights a checkpoint holds."""
    found = {}
    for file in checkpoint.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            found.update({name: handle.get_slice(name).get_dtype() for name in handle.keys()})
    return found


@pytest.mark.parametrize("method, extra", METHODS, ids=[run_id(*m) for m in METHODS])
def test_trained_parameters_and_optimizer_state_are_fp32_frozen_weights_bf16(bf16_runs, method, extra):
    result = bf16_runs[run_id(method, extra)]
    out, model = result.out, result.model
    floating = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    trained = {n: p.dtype for n, p in floating if p.requires_grad}
    frozen = {n: p.dtype for n, p in floating if not p.requires_grad}
    assert set(trained.values()) <= {torch.float32}
    if method == "full":  # every weight trains: all stay fp32 master weights
        assert trained and not frozen
    elif extra:  # persian rows: the final model was merged (rows written back); the checkpoint shows training
        saved = checkpoint_dtypes(out / "checkpoints" / "step-3")
        rows = {n: d for n, d in saved.items() if "trainable_rows" in n and "ids" not in n}
        assert rows and set(rows.values()) == {"F32"}
        assert {d for n, d in saved.items() if n not in rows and d != "I64"} == {"BF16"}
    else:
        assert trained and frozen and set(frozen.values()) == {torch.bfloat16}
    if method == "embed_head" and not extra:  # the tied matrix trains in fp32 and stays tied
        embedding = model.get_input_embeddings().weight
        assert embedding.dtype == torch.float32 and embedding is model.get_output_embeddings().weight
    optimizer = torch.load(out / "checkpoints" / "step-3" / "optimizer.pt", weights_only=False)
    moments = [state[key] for state in optimizer["state"].values() for key in ("exp_avg", "exp_avg_sq")]
    assert moments and {m.dtype for m in moments} == {torch.float32}
    assert result.summary["precision"] == "bf16"
    assert json.loads((out / "final" / "fatune.json").read_text())["precision"] == "bf16"
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["precision"] == "bf16"


@pytest.mark.parametrize("method, extra", [("lora", []), ("embed_head", []), ("embed_head", ["method.rows=persian"])])
def test_bf16_losses_track_fp32(tmp_path, tiny_model_dir, method, extra):
    losses = {}
    for precision in ("fp32", "bf16"):
        config = tiny_train_config(tiny_model_dir, tmp_path / precision, method, *extra,
                                   f"train.precision={precision}", "data.val_ratio=0")
        losses[precision] = step_losses(train(config).out)
    assert len(losses["bf16"]) == len(losses["fp32"]) == 4
    for exact, mixed in zip(losses["fp32"], losses["bf16"]):
        assert mixed >= 0 and abs(mixed - exact) <= 0.02 * exact, losses


@pytest.mark.parametrize("measured, later, expected", [(4.0, 0.05, "bf16"), (0.05, 4.0, "fp32")])
def test_auto_follows_the_measured_speedup_and_a_resumed_run_keeps_its_decision(
        tmp_path, tiny_model_dir, monkeypatch, caplog, capsys, measured, later, expected):
    out = tmp_path / "run"
    monkeypatch.setattr(precision_rules, "cpu_bf16_speedup", lambda: measured)
    with caplog.at_level(logging.WARNING, logger="fatune"):
        train(tiny_train_config(tiny_model_dir, out, "lora", "train.precision=auto", "train.max_steps=2"))
    assert f"train.precision auto -> {expected}: " in caplog.text
    assert ("4.0x faster than fp32" if expected == "bf16" else "bf16 is 0.05x here") in caplog.text
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["precision"] == expected
    assert json.loads((out / "final" / "fatune.json").read_text())["precision"] == expected

    (out / "train_summary.json").unlink()  # pretend it died after its step-2 checkpoint
    monkeypatch.setattr(precision_rules, "cpu_bf16_speedup", lambda: later)  # the machine now measures otherwise
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fatune"):
        result = train(tiny_train_config(tiny_model_dir, out, "lora", "train.precision=auto", "train.max_steps=4"))
    assert "resuming from step 2" in capsys.readouterr().out
    assert f"train.precision auto -> {expected}: as this run resolved it when it started" in caplog.text
    assert result.summary["precision"] == expected and result.summary["steps"] == 4
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["precision"] == expected
    assert json.loads((out / "final" / "fatune.json").read_text())["precision"] == expected
    base = result.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert base.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


@pytest.mark.parametrize("method", ["lora", "embed_head"])
def test_a_bf16_run_loads_and_computes_as_it_trained(bf16_runs, method):
    result = bf16_runs[method]
    chat = fatune.load(str(result.out))
    loaded = chat.loaded.model
    assert chat.loaded.precision == "bf16"
    if method == "lora":
        q_proj = loaded.base_model.model.model.layers[0].self_attn.q_proj
        assert q_proj.base_layer.weight.dtype == torch.bfloat16 and q_proj.lora_A.default.weight.dtype == torch.float32
    else:  # the saved mix: the trained (tied) matrix in fp32, the rest in bf16
        assert loaded.get_input_embeddings().weight.dtype == torch.float32
        assert loaded.get_input_embeddings().weight is loaded.get_output_embeddings().weight
        assert loaded.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    ids = torch.tensor([chat.prompt_ids(PROMPT)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = result.model.eval()(input_ids=ids).logits
    with torch.no_grad():
        got = loaded(input_ids=ids).logits  # a plain call (as evaluation makes one) runs under the run's autocast
    assert torch.allclose(expected.float(), got.float(), atol=1e-5), (expected - got).abs().max()
    first, second = (chat.generate([PROMPT], max_new_tokens=12)[0]["output_ids"] for _ in range(2))
    assert first == second and len(first) > 0


def test_a_bf16_lora_run_generates_what_its_recorded_settings_give_by_hand(bf16_runs, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = bf16_runs["lora"].out
    chat = fatune.load(str(out))
    tokens = chat.generate([PROMPT], max_new_tokens=12)[0]["output_ids"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16, attn_implementation="eager")
    by_hand = PeftModel.from_pretrained(base, out / "final").eval()
    ids = torch.tensor([chat.prompt_ids(PROMPT)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        generated = by_hand.generate(input_ids=ids, max_new_tokens=12, do_sample=False, eos_token_id=chat.stop_ids,
                                     pad_token_id=chat.tokenizer.pad_token_id)
    assert generated[0, ids.shape[1]:].tolist()[:len(tokens)] == tokens


def test_a_caller_given_dtype_overrides_the_recorded_precision(bf16_runs):
    chat = fatune.load(str(bf16_runs["lora"].out), dtype=torch.float32)
    base = chat.loaded.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert chat.loaded.precision == "fp32" and base.dtype == torch.float32


def test_fp16_on_cpu_trains_with_force_fp16_and_real_loss_scaling(tmp_path, tiny_model_dir):
    with pytest.raises(FatuneError, match="force_fp16"):  # Gemma 2's rule stays
        train(tiny_train_config(tiny_model_dir, tmp_path / "refused", "lora", "train.precision=fp16"))
    result = train(tiny_train_config(tiny_model_dir, tmp_path / "run", "lora", "train.precision=fp16",
                                     "train.force_fp16=true", "train.max_steps=2"))
    losses = step_losses(result.out)
    assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses)))
    assert result.summary["precision"] == "fp16"
    assert (result.out / "checkpoints" / "step-2" / "scaler.pt").exists()  # a GradScaler ran: fp16, not fp32
