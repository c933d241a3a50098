"""The run artifact: what a finished run publishes, and the one place that names, finds, reads and writes it.

A run OUT publishes ``OUT/final`` (``FINAL_DIR``): the model (a PEFT adapter for ptuning, lora and qlora;
a full HF model for embed_head and full), the tokenizer with the run's chat template, and ``fatune.json``
(``FATUNE_JSON``: base model, method, template, normalization, precision), so that fatune loads it
exactly as it was trained and other tools load it without fatune. Checkpoints (``OUT/checkpoints/step-N``)
carry the same ``fatune.json`` but no tokenizer: the run keeps one copy in ``OUT/tokenizer``
(``RUN_TOKENIZER_DIR``), and ``tokenizer_dir`` finds it.

Training writes the artifact, generation, export, serving and evaluation read it; all of them go through
here, so its layout lives in one file. Every write is atomic (``fsutil.publish_dir``, or a temporary file
renamed into place): a kill or a full disk never leaves a half-written ``final/``, tokenizer or
``fatune.json``, and never damages the previous one. What goes *into* ``fatune.json`` and how each method
saves its weights belong to ``training.final``; this module sits below training and generation and imports
nothing of fatune but ``errors`` and ``fsutil``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from fatune.errors import FatuneError
from fatune.fsutil import DiskFullError, is_disk_full, publish_dir

FATUNE_JSON = "fatune.json"
FINAL_DIR = "final"
RUN_TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"
# Keys every loader reads; an artifact without one of them cannot be loaded as trained.
REQUIRED_KEYS = ("method", "base_model", "template")


def final_path(out: str | Path) -> Path:
    """Where run ``out`` publishes its artifact (whether or not it exists yet)."""
    return Path(out) / FINAL_DIR


def final_dir(path: str | Path) -> Path | None:
    """The artifact dir ``path`` names: ``path`` itself when it holds ``fatune.json`` (``RUN/final``, a
    checkpoint ``RUN/checkpoints/step-N``, an export), ``RUN/final`` for a run dir, None for anything else
    (a base model, a PEFT adapter). A run that never finished is an error that says how to resume it."""
    path = Path(path)
    if (path / FATUNE_JSON).is_file():
        return path
    if (path / FINAL_DIR / FATUNE_JSON).is_file():
        return path / FINAL_DIR
    if (path / "config.yaml").exists() and (path / CHECKPOINTS_DIR).is_dir():
        raise FatuneError(f"{path}: this run has no {FINAL_DIR}/ yet (it did not finish); run the same "
                          "`fatune train` command again to resume it, or point at a checkpoint's base model")
    return None


def tokenizer_dir(final: str | Path) -> Path:
    """Where the tokenizer of artifact dir ``final`` is: in it (``final/``, and checkpoints of older fatune
    versions), or, for ``RUN/checkpoints/step-N``, the one copy its run keeps in ``RUN/tokenizer``."""
    final = Path(final)
    if (final / "tokenizer_config.json").exists():
        return final
    shared = final.parent.parent / RUN_TOKENIZER_DIR
    if final.parent.name == CHECKPOINTS_DIR and (shared / "tokenizer_config.json").exists():
        return shared
    return final  # loading it names this dir in its error


def read_metadata(final: str | Path, require: tuple[str, ...] = REQUIRED_KEYS) -> dict:
    """``fatune.json`` of artifact dir ``final`` as a dict. A missing, unreadable or damaged file, or one
    without a ``require``d key, is a ``FatuneError`` that names the file."""
    file = Path(final) / FATUNE_JSON
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FatuneError(f"{file}: not found; {Path(final)} is not a fatune run's {FINAL_DIR}/ or checkpoint") \
            from None
    except (OSError, UnicodeDecodeError) as error:
        raise FatuneError(f"{file}: could not read it ({getattr(error, 'strerror', None) or error})") from None
    except ValueError as error:
        raise FatuneError(f"{file}: not valid JSON ({error}); the run's metadata is damaged, train it again "
                          "or restore the file") from None
    if not isinstance(meta, dict):
        raise FatuneError(f"{file}: expected a JSON object, found {type(meta).__name__}")
    missing = [key for key in require if key not in meta]
    if missing:
        raise FatuneError(f"{file}: missing {', '.join(missing)}; the run's metadata is incomplete")
    return meta


def find_artifact(path: str | Path) -> tuple[Path | None, dict]:
    """(artifact dir, its metadata) for what ``path`` names, or (None, {}) when it is no fatune artifact:
    a base model, a PEFT adapter, a hub id or ``pypi:`` alias (not a local dir)."""
    path = Path(path).expanduser()
    final = final_dir(path) if path.is_dir() else None
    return (final, read_metadata(final)) if final is not None else (None, {})


def write_metadata(folder: str | Path, meta: dict) -> Path:
    """Write ``meta`` as ``folder/fatune.json`` through a temporary file: a failure (a full disk, a value
    JSON cannot hold) leaves an existing ``fatune.json`` as it was."""
    file = Path(folder) / FATUNE_JSON
    text = json.dumps(meta, indent=2, ensure_ascii=False)  # before touching the disk: bad values fail here
    tmp = file.with_name(f".{file.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, file)
    except Exception as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise DiskFullError(file, error) from None
        raise
    return file


def write_final(final: str | Path, save_model: Callable[[Path], None], tokenizer, meta: dict) -> Path:
    """Publish an artifact at ``final`` atomically: ``save_model(dir)`` (the method's weights), the
    tokenizer and ``fatune.json`` are written into a temporary dir that then replaces ``final``."""

    def build(tmp: Path) -> None:
        save_model(tmp)
        tokenizer.save_pretrained(tmp)
        write_metadata(tmp, meta)

    return publish_dir(build, Path(final), replace=True)


def save_run_tokenizer(tokenizer, out: str | Path, keep_existing: bool = False) -> Path:
    """``OUT/tokenizer``: the run's tokenizer, once (not in each checkpoint), written atomically. A resumed
    run keeps the copy its start wrote (``keep_existing``); a new run replaces whatever an earlier,
    possibly different, experiment left."""
    target = Path(out) / RUN_TOKENIZER_DIR
    if keep_existing and (target / "tokenizer_config.json").exists():
        return target
    try:
        return publish_dir(tokenizer.save_pretrained, target, replace=True)
    except OSError as error:
        raise FatuneError(f"could not write the run's tokenizer to {target} ({error.strerror or error}); "
                          "free space or fix the output dir and rerun the same command") from None
