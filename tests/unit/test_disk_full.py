"""A full disk (ENOSPC) during ``fatune data prepare``, ``fatune export`` and ``fatune generate --out``.

Each case gets one line, ``fatune: error: no space left on device writing PATH: ...``, exit code 2, no partial
file or temporary folder left behind, and every earlier file intact: the previous output at PATH (written by an
earlier run) keeps every byte, and so do the user's data and the run being exported.

The full disk is injected two ways: the error a write raises when the disk is full, after a byte budget (an
``OSError(ENOSPC)`` from the file object fatune's JSONL writer opens and from fsspec's local file that datasets
writes through; safetensors' own ``SafetensorError``, whose text is all that says ENOSPC), and, where the tests
run as root, a real 1 MiB tmpfs that fills up (skipped elsewhere, with the reason). /dev/full is no substitute:
safetensors 0.8 writes to a temporary file beside the target and renames it, so as root it replaces /dev/full.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from fatune.cli import main

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
PROMPTS = [{"messages": [{"role": "user", "content": "سلام، حالت چطور است؟"}]},
           {"messages": [{"role": "user", "content": "پایتخت ایران کجاست؟"}]}]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (names relative to it) and the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(captured, path: Path) -> str:
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"fatune: error: no space left on device writing {path}: "), lines[0]
    assert "Traceback" not in captured.err
    return lines[0]


class Budget:
    """Bytes a fake disk still takes; ``spend`` raises ENOSPC once they are used up."""

    def __init__(self, free: int):
        self.free = free

    def spend(self, n: int) -> None:
        if n > self.free:
            self.free = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.free -= n


# -- fatune generate --out -----------------------------------------------------------------------------------

class StubModel:
    """Stands in for a loaded model: answers each prompt with ``size`` characters (no torch, no weights)."""

    def __init__(self, size: int = 50):
        self.size = size

    def generate(self, prompts, preset, **kwargs):
        return [{"messages": p, "answer": "پاسخ " * self.size, "new_tokens": self.size} for p in prompts]


def _generate(tmp_path, monkeypatch, out: Path, size: int = 50) -> int:
    import fatune.cli

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PROMPTS), encoding="utf-8")
    monkeypatch.setattr(fatune.cli, "_load_chat_model", lambda args: StubModel(size))
    return main(["generate", "some-run", "--prompts", str(prompts), "--out", str(out)])


def test_generate_out_full_disk_keeps_the_earlier_answers(tmp_path, monkeypatch, capsys):
    import fatune.fsutil

    out = tmp_path / "answers.jsonl"
    out.write_text('{"answer": "from an earlier run"}\n', encoding="utf-8")
    before = out.read_bytes()
    budget = Budget(600)  # the first answer line fits, the second does not: a partial file

    class FillingFile:
        def __init__(self, *args, **kwargs):
            self.handle = open(*args, **kwargs)

        def write(self, data):
            budget.spend(len(data.encode("utf-8")))
            return self.handle.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(fatune.fsutil, "open", FillingFile, raising=False)
    assert _generate(tmp_path, monkeypatch, out) == 2
    one_error_line(capsys.readouterr(), out)
    assert out.read_bytes() == before  # not truncated: the answers went to a temporary name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl", "prompts.jsonl"]  # no .tmp left


def test_generate_out_writes_answers_when_the_disk_has_room(tmp_path, monkeypatch, capsys):
    """The reference for the case above: the same command without the fault replaces the file."""
    out = tmp_path / "answers.jsonl"
    out.write_text("old\n", encoding="utf-8")
    assert _generate(tmp_path, monkeypatch, out) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["messages"] for row in rows] == [p["messages"] for p in PROMPTS]


# -- fatune data prepare -------------------------------------------------------------------------------------

def _prepare_config(tmp_path, tiny_tok_dir) -> Path:
    config = tmp_path / "prepare.yaml"
    config.write_text(f"model: {{path: '{tiny_tok_dir}', template: gemma}}\n"
                      "data: {path: 'fatune:sample', max_length: 128, cache: false}\n"
                      f"output: {{dir: '{tmp_path / 'run'}'}}\n", encoding="utf-8")
    return config


def test_prepare_full_disk_keeps_the_earlier_dataset_and_the_data(tmp_path, tiny_tok_dir, monkeypatch, capsys):
    from fsspec.implementations.local import LocalFileOpener

    from fatune.data.records import sample_path

    config = _prepare_config(tmp_path, tiny_tok_dir)
    out = tmp_path / "prepared"
    assert main(["data", "prepare", str(config), "--out", str(out)]) == 0  # an earlier, complete run
    earlier, data = snapshot(out), sample_path().read_bytes()
    capsys.readouterr()

    budget = Budget(2000)  # datasets writes the arrow shards through fsspec's local files
    real_write = LocalFileOpener.write

    def filling_write(self, data, *args, **kwargs):
        budget.spend(len(data))
        return real_write(self, data, *args, **kwargs)

    monkeypatch.setattr(LocalFileOpener, "write", filling_write)
    assert main(["data", "prepare", str(config), "data.seed=7", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr(), out)
    assert snapshot(out) == earlier and sample_path().read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepare.yaml", "prepared"]  # no .prepared.* left


# -- fatune export -------------------------------------------------------------------------------------------

def _fake_lora_run(tmp_path, tiny_tok_dir) -> Path:
    """A finished LoRA run as export reads it: final/ with fatune.json, the tokenizer and an adapter file."""
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    for item in Path(tiny_tok_dir).iterdir():
        (final / item.name).write_bytes(item.read_bytes())
    (final / "adapter_model.safetensors").write_bytes(b"adapter weights")
    (final / "fatune.json").write_text(json.dumps({"method": "lora", "base_model": "base", "template": "gemma"}))
    return tmp_path / "run"


class StubMerged:
    """A merged model whose safetensors write runs out of space after ``partial`` bytes, raising what safetensors
    0.8 raises then (seen on a full tmpfs): a SafetensorError, no OSError, with the errno only in its text."""

    def __init__(self, partial: int = 4096):
        self.partial = partial

    def save_pretrained(self, folder):
        from safetensors import SafetensorError

        (Path(folder) / "config.json").write_text("{}")
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * self.partial)  # what fit before the disk filled
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_export_full_disk_keeps_the_earlier_export_and_the_run(tmp_path, tiny_tok_dir, monkeypatch, capsys):
    import fatune.export

    run = _fake_lora_run(tmp_path, tiny_tok_dir)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"an earlier export")
    earlier, run_files = snapshot(out), snapshot(run)
    monkeypatch.setattr(fatune.export, "_merged", lambda final, meta: StubMerged())
    assert main(["export", str(run), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr(), out)
    assert snapshot(out) == earlier and snapshot(run) == run_files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "run"]  # no .exported.* left


def test_other_writes_that_fill_the_disk_are_one_line(tmp_path, monkeypatch, capsys):
    """A write outside fatune.fsutil (here the arena's leaderboard) still ends in one line and exit 2."""
    import fatune.eval.arena

    target = tmp_path / "arena" / "leaderboard.json"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(fatune.eval.arena, "write_leaderboard", full)
    assert main(["arena", str(tmp_path / "votes.jsonl")]) == 2
    one_error_line(capsys.readouterr(), target)


# -- a real full disk: a 1 MiB tmpfs (root only) -------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test; skipped where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root; the injected-ENOSPC "
                    "tests above cover the same paths")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed here ({mounted.stderr.strip() or mounted.returncode})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _free(folder: Path) -> int:
    return os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize


def test_full_tmpfs_generate_export_prepare(small_disk, tmp_path, tiny_tok_dir, monkeypatch, capsys):
    """The real ENOSPC of the kernel, through the real writers (json lines, safetensors, datasets/pyarrow):
    one line each, earlier files intact, the partial copies removed (the free space is what it was)."""
    import numpy as np

    import fatune.export

    # generate --out: ~1.5 MB of answers onto a 1 MiB disk that already holds an earlier answers file
    out = small_disk / "answers.jsonl"
    out.write_text('{"answer": "earlier"}\n', encoding="utf-8")
    free = _free(small_disk)
    assert _generate(tmp_path, monkeypatch, out, size=150_000) == 2
    one_error_line(capsys.readouterr(), out)
    assert out.read_text(encoding="utf-8") == '{"answer": "earlier"}\n' and _free(small_disk) == free

    # export: a merged model of 2 MB written by safetensors itself
    class BigMerged:
        def save_pretrained(self, folder):
            from safetensors.numpy import save_file

            save_file({"weight": np.ones((512, 1024), dtype=np.float32)}, str(Path(folder) / "model.safetensors"))

    run = _fake_lora_run(tmp_path, tiny_tok_dir)
    exported = small_disk / "exported"
    exported.mkdir()
    (exported / "README.md").write_text("an earlier export")
    earlier, free = snapshot(exported), _free(small_disk)
    monkeypatch.setattr(fatune.export, "_merged", lambda final, meta: BigMerged())
    assert main(["export", str(run), "--out", str(exported)]) == 2
    one_error_line(capsys.readouterr(), exported)
    assert snapshot(exported) == earlier and _free(small_disk) == free

    # data prepare: the disk filled up to its last 32 KiB by another file, then the splits do not fit
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * max(_free(small_disk) - 32 * 1024, 0))
    free = _free(small_disk)
    prepared = small_disk / "prepared"
    assert main(["data", "prepare", str(_prepare_config(tmp_path, tiny_tok_dir)), "--out", str(prepared)]) == 2
    one_error_line(capsys.readouterr(), prepared)
    assert not prepared.exists() and _free(small_disk) == free
    assert sorted(p.name for p in small_disk.iterdir()) == ["answers.jsonl", "exported", "filler"]
