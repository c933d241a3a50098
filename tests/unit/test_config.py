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


def test_cross_field_rule():
    with pytest.raises(FatuneError, match="data.digits needs data.normalize: true"):
        load_config(None, ["data.normalize=false", "data.digits=latin"])


def test_every_field_is_documented():
    for section in Config.model_fields.values():
        for name, field in section.annotation.model_fields.items():
            assert field.description, f"{section.annotation.__name__}.{name} has no docstring"
    assert "data.max_length" in valid_keys() and "output.dir" in valid_keys()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_start_with_their_command(path):
    load_config(path)
    assert path.read_text().startswith("# fatune ")


def test_cli_bad_config_exits_2_with_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  max_length: zero\n")
    result = run_cli("data", "prepare", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.max_length: Input should be a valid integer" in result.stderr
