"""Fuzz config overrides (``dotted.key=value``) and config files: a ``Config``, or a ``FatuneError`` each of whose lines
names where the problem is (``command line: KEY: ...``, ``config: FIELD: ...`` or ``FILE:LINE: ...``)."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fatune.config import Config, load_config, valid_keys
from fatune.errors import FatuneError

from .strategies import arbitrary_bytes, scratch, text

pytestmark = pytest.mark.fuzz

KEYS = valid_keys()
# YAML that parses to every type, and YAML that does not parse at all.
VALUES = ["1", "-1", "0", "1e-4", "1e999", ".nan", "true", "no", "null", "~", "''", "[]", "{}", "[1, 2]", "{a: 1}",
          "2024-01-01", "0x1f", "0o17", "'10'", '"10"', "lora", "qlora", "fatune:sample", "a: b", "[", "{", "]",
          "}", "- a", "*x", "&x y", "!!python/object:os.system", "!!binary YQ==", "%YAML 1.2", "'", '"', "a\tb",
          "@", "`", "|", ">", "? a", "[" * 300, "9" * 5000]
# Valid keys are drawn most often: an unknown key fails before its value is parsed.
# Printable YAML pieces: arbitrary bytes mostly stop at PyYAML's reader (a control character), these reach the
# scanner, parser and constructor (deep nesting, 5000-digit integers, anchors, tags).
YAML_PIECES = ["\n", "  ", "- ", ": ", "[", "]", "{", "}", ", ", "&a ", "*a", "!!int ", "!!str ", "!!python/name:os ",
               "? ", "|", ">", "#", "'", '"', "---\n", "...\n", "%YAML 1.1\n", "data", "train", "max_steps", "path",
               "x", "1", "9" * 5000, "[" * 1500, "{a: " * 1200, "\t", "سلام", "\u200c"]
yaml_soup = st.lists(st.sampled_from(YAML_PIECES), max_size=12).map("".join)
key = st.sampled_from(KEYS) | st.sampled_from(KEYS) | st.sampled_from(KEYS).map(lambda k: k.upper()) | st.sampled_from(
    ["lr", "steps", "bs", "data..path", ".data", "data.", "", " ", "model", "train.max_steps.x", "x.y.z"]) | text
value = st.sampled_from(VALUES) | yaml_soup | text | st.integers().map(str) | st.floats().map(repr) | st.builds(
    json.dumps, st.recursive(st.none() | st.booleans() | st.integers() | text, st.lists, max_leaves=5))
override = st.builds(lambda k, v: f"{k}={v}", key, value) | st.builds(lambda k, v: f"{k}={v}", key, value) | text


def _check(error: FatuneError, where: list[str]) -> None:
    message = str(error)
    assert message, "an empty message"
    for line in message.split("\n"):
        assert any(line.startswith(prefix) for prefix in where), f"{line[:200]!r} names no place ({where})"
        assert "Traceback" not in line


@given(st.lists(override, max_size=4))
def test_overrides_give_a_config_or_a_located_error(overrides):
    try:
        config = load_config(None, overrides)
    except FatuneError as error:
        _check(error, ["command line: ", "config: "])
        return
    assert isinstance(config, Config)


@given(st.integers(-10**6, 10**6), st.sampled_from(["train.max_steps", "train.seed", "data.seed"]))
def test_integer_overrides_are_taken_exactly(number, field):
    """Reference: an integer given on the command line is the integer in the config."""
    config = load_config(None, [f"{field}={number}"])
    section, name = field.split(".")
    assert getattr(getattr(config, section), name) == number


def _yaml_quoted(value: str) -> str:
    """``value`` as a YAML double-quoted scalar with every character outside printable ASCII escaped (YAML 1.1 reads
    NEL and U+2028 as line breaks, and PyYAML does not join JSON's surrogate-pair escapes)."""
    def escape(char: str) -> str:
        code = ord(char)
        if 0x20 <= code < 0x7F and char not in '"\\':
            return char
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return '"' + "".join(map(escape, value)) + '"'


@given(text)
def test_string_overrides_are_taken_exactly(value):
    """Reference: any text, written as a YAML string on the command line, is that string in the config."""
    config = load_config(None, [f"output.dir={_yaml_quoted(value)}"])
    assert config.output.dir == value


def _config_dict(draw_leaf):
    sections = {"model": ["path", "template", "tokenizer"], "data": ["path", "max_length", "val_ratio", "sources"],
                "method": ["name", "r", "rows"], "train": ["max_steps", "learning_rate", "scheduler"],
                "eval": ["max_rows"], "output": ["dir"], "bogus": ["x"]}
    return st.dictionaries(st.sampled_from(sorted(sections)) | text,
                           st.dictionaries(st.sampled_from(sum(sections.values(), [])) | text, draw_leaf, max_size=4)
                           | draw_leaf, max_size=5)


leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text | st.lists(
    st.integers() | text, max_size=3) | st.just([{"path": "fatune:sample", "count": 0}])


@given(_config_dict(leaf).map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode("utf-8")) | arbitrary_bytes
       | yaml_soup.map(lambda t: t.encode("utf-8")))
def test_config_files_give_a_config_or_a_located_error(data):
    with scratch() as folder:
        path = folder / "config.yaml"
        path.write_bytes(data)
        try:
            config = load_config(path)
        except FatuneError as error:
            _check(error, [str(path)])
            return
        assert isinstance(config, Config)
