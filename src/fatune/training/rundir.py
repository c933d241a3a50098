"""The run directory (OUT = ``output.dir``): lock, finished/unfinished state, checkpoints, summary.

Layout: ``config.yaml`` (the resolved config), ``tokenizer/`` (written once per run: checkpoints do not
repeat its 33 MB), ``checkpoints/step-N/`` (written to ``.tmp-step-N`` and renamed, so a directory
named ``step-N`` was complete when written; ``integrity`` checks it again before a resume),
``final/`` (the artifact), ``metrics.jsonl``, ``loss_curve.png``, ``tensorboard/`` and
``train_summary.json``, whose presence marks a finished run. Other names under ``checkpoints/`` are
never loaded: ``.tmp-step-N`` (a save in progress, or one a kill interrupted), ``.del-step-N`` (a
rotation in progress) and ``step-N.corrupt`` (a damaged checkpoint set aside, kept for inspection).

``fault_point`` is a test hook (``FATUNE_FAULT_AT``) that kills the process or raises ENOSPC at a named
point of a checkpoint save; tests/integration/test_checkpoint_faults.py uses it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import signal
from pathlib import Path

from fatune.artifact import CHECKPOINTS_DIR
from fatune.errors import FatuneError

SUMMARY = "train_summary.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
FAULT_ENV = "FATUNE_FAULT_AT"
_FAULT_ACTIONS = ("kill", "partial", "enospc")


def fault_point(name: str, step: int, path: Path | None = None) -> None:
    """A test hook inside checkpoint saving; it does nothing unless ``FATUNE_FAULT_AT`` names this point.

    ``FATUNE_FAULT_AT=save:NAME[:ACTION][@STEP]`` acts when the save of step STEP (any step when omitted)
    reaches the point NAME. ACTION ``kill`` (the default) sends SIGKILL to this process, as a notebook
    killed mid-save; ``partial`` first truncates ``path`` to half its size, as a kill halfway through
    writing that file; ``enospc`` raises ``OSError(ENOSPC)``, as a full disk. Names are listed in
    ``FatuneTrainer._save_checkpoint``. Without the variable this costs one dict lookup per point.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec or not spec.startswith("save:"):
        return
    spec, _, at = spec[len("save:"):].partition("@")
    point, _, action = spec.partition(":")
    if point != name or (at and int(at) != step):
        return
    action = action or "kill"
    if action not in _FAULT_ACTIONS:
        raise ValueError(f"{FAULT_ENV}: unknown action {action!r}; one of {', '.join(_FAULT_ACTIONS)}")
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path or name))
    if action == "partial" and path is not None and path.is_file():
        os.truncate(path, path.stat().st_size // 2)
    os.kill(os.getpid(), signal.SIGKILL)


class RunLock:
    """An exclusive ``flock`` on ``OUT/.lock``. The kernel drops it when the process dies, SIGKILL included,
    so a killed run never leaves a stale lock behind."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self.handle = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise FatuneError(f"{self.path.parent}: another fatune run is using this output dir ({holder}); "
                              "wait for it or choose another output.dir") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}")
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Checkpoints (directories named exactly ``step-N``) as ``(step, path)``, oldest first. A save in
    progress (``.tmp-step-N``), a rotation in progress (``.del-step-N``) and a checkpoint set aside
    (``step-N.corrupt``) are not checkpoints. A ``step-N`` is whole unless something damaged it after
    its rename; ``integrity.usable_checkpoint`` checks that before a resume."""
    root = Path(out) / CHECKPOINTS_DIR
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1][1] if found else None


def is_finished(out: Path) -> bool:
    return (Path(out) / SUMMARY).exists()


def clear_run(out: Path) -> None:
    """Remove a previous run's files (``--overwrite``), keeping the lock file we hold."""
    for child in Path(out).iterdir():
        if child.name == ".lock":
            continue
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def truncate_metrics(out: Path, step: int) -> None:
    """Drop log rows written after ``step`` by a run that died (``step`` 0: a run killed before its first
    checkpoint), so a resumed run's log has no duplicates. A last line that a kill cut short is dropped."""
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", step + 1) <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def remove_partial_saves(out: Path) -> None:
    """Remove what killed saves and rotations left behind (``.tmp-step-N``, ``.del-step-N``): never loaded,
    only disk space. Called with the run lock held, so no other process is saving into them."""
    root = Path(out) / CHECKPOINTS_DIR
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith((".tmp-step-", ".del-step-")):
                shutil.rmtree(child, ignore_errors=True)


def rotate(out: Path, keep: int | None, step: int = 0) -> None:
    """Keep only the newest ``keep`` checkpoints. Each old one is first renamed to ``.del-step-N`` (atomic),
    then deleted: a kill during the deletion leaves a hidden folder, never a half-deleted ``step-N``
    that a later resume could fall back to."""
    if keep is None:
        return
    for _, path in checkpoints(out)[:-keep]:
        doomed = path.with_name(f".del-{path.name}")
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        fault_point("rotate-renamed", step, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        fault_point("rotated", step, path)
