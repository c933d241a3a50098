"""Config: validated once at load, overrides left to right, errors that name the field and the fix."""

from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from fatune.config import Config, load_config, valid_keys
from fatune.errors import FatuneError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_offline_demo():
    config = load_config()
    assert config.model.path == "pypi:gemma-3-270m" and config.data.path == "fatune:sample"
    assert (config.data.max_length, config.data.val_ratio, config.data.seed) == (1024, 0.1, 42)


def test_overrides_apply_left_to_right_and_parse_yaml_values():
    config = load_config(None, ["data.max_length=512", "data.packing=false", "data.max_length=256",
                                "model.tokenizer=null"])
    assert config.data.max_length == 256 and config.data.packing is False and config.model.tokenizer is None


def test_override_beats_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"max_length": 128, "path": "x.jsonl"}}))
    config = load_config(path, ["data.max_length=64"])
    assert (config.data.max_length, config.data.path) == (64, "x.jsonl")


@pytest.mark.parametrize("override, message", [
    ("data.max_lenght=5", "unknown config key 'data.max_lenght'; did you mean data.max_length"),
    ("data.max_length=-1", "data.max_length: Input should be greater than 0 (got -1)"),
    ("data.fraction=1.5", "data.fraction: Input should be less than or equal to 1"),
    ("model.template=llama", "model.template: Input should be 'auto', 'gemma', 'chatml' or 'hf'"),
    ("data.max_length", "must look like dotted.key=value"),
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(FatuneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  pathh: x.jsonl\n")
    with pytest.raises(FatuneError, match=rf"{path}: unknown config key 'data.pathh'; did you mean data.path"):
        load_config(path)


def test_a_config_that_is_not_a_mapping_names_all_six_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- model\n- data\n")
    with pytest.raises(FatuneError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: a config must be a mapping with sections model, data, method, train, eval, output"


def test_cross_field_rule():
    with pytest.raises(FatuneError, match="data.digits needs data.normalize: true"):
        load_config(None, ["data.normalize=false", "data.digits=latin"])


def test_every_field_is_documented():
    for section in Config.model_fields.values():
        for name, field in section.annotation.model_fields.items():
            assert field.description, f"{section.annotation.__name__}.{name} has no docstring"
    assert "data.max_length" in valid_keys() and "output.dir" in valid_keys()


FATUNE_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "accelerate")


@pytest.mark.parametrize("path", FATUNE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_load_and_start_with_their_command(path):
    config = load_config(path)
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# fatune ") and str(path.relative_to(ROOT)) in first_line
    if path.parent.name == "demo" and path.name != "data.yaml":
        assert config.model.path == "pypi:gemma-3-270m" and config.data.path == "fatune:sample"
        assert config.train.precision == "auto" and config.train.grad_accum == 1
        assert config.method.load_in_4bit == (config.method.name == "qlora")
        assert path.stem == config.method.name


def test_seed_configs_reproduce_the_seed():
    for method in ("ptuning", "qlora", "embed_head", "lora"):
        config = load_config(ROOT / "configs" / "gemma2-2b-it" / f"{method}.yaml")
        assert config.model.path == "google/gemma-2-2b-it" and config.model.template == "chatml"
        assert config.data.path == "miladmim/slim-orca-dedup-chat-50k-persian" and config.data.max_length == 1024
        assert (config.train.learning_rate, config.train.scheduler, config.train.warmup_ratio,
                config.train.max_grad_norm) == (2e-4, "constant", 0.03, 0.3)
        assert config.train.gradient_checkpointing and config.train.save_steps == config.train.eval_steps == 200
        assert config.train.precision == "fp16" and config.train.force_fp16  # T4: fp16 autocast, forced
        assert config.method.name == method and config.data.packing == (method != "ptuning")
    assert load_config(ROOT / "configs/gemma2-2b-it/embed_head.yaml").data.fraction == 0.2
    assert load_config(ROOT / "configs/gemma2-2b-it/ptuning.yaml").method.load_in_4bit


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_parse_and_start_with_their_command(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in ("MULTI_GPU", "DEEPSPEED", "FSDP")
    assert path.read_text().startswith(f"# accelerate launch --config_file configs/accelerate/{path.name} -m fatune")


def test_cli_bad_config_exits_2_with_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  max_length: zero\n")
    result = run_cli("data", "prepare", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.max_length: Input should be a valid integer" in result.stderr


def test_the_documented_dotted_keys_exist_and_override():
    keys = ["model.path", "model.template", "data.path", "data.max_length", "data.fraction", "method.name",
            "train.max_steps", "train.epochs", "train.batch_size", "train.grad_accum", "train.learning_rate",
            "train.scheduler", "train.warmup_ratio", "train.save_steps", "train.save_total_limit", "train.eval_steps",
            "train.logging_steps", "train.seed", "output.dir"]
    assert set(keys) <= set(valid_keys())
    config = load_config(None, ["train.max_steps=7", "train.max_steps=9", "method.name=qlora", "train.scheduler=cosine"])
    assert (config.train.max_steps, config.method.name, config.train.scheduler) == (9, "qlora", "cosine")


@pytest.mark.parametrize("key, suggestion", [("train.lr", "train.learning_rate"),
                                             ("train.gradient_accumulation_steps", "train.grad_accum"),
                                             ("method.lora_alpha", "method.alpha")])
def test_names_from_other_trainers_get_fatunes_name(key, suggestion):
    with pytest.raises(FatuneError, match=f"did you mean {suggestion}"):
        load_config(None, [f"{key}=1"])
