"""The run directory (OUT = ``output.dir``): lock, finished/unfinished state, checkpoints, summary.

Layout: ``config.yaml`` (the resolved config), ``checkpoints/step-N/`` (written to a temporary dir and
renamed, so a directory named ``step-N`` is always complete), ``final/`` (the artifact),
``metrics.jsonl``, ``loss_curve.png``, ``tensorboard/`` and ``train_summary.json``, whose presence
marks a finished run.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from pathlib import Path

from fatune.errors import FatuneError

SUMMARY = "train_summary.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


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
    """Complete checkpoints as ``(step, path)``, oldest first."""
    root = Path(out) / "checkpoints"
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / "trainer_state.json").exists():
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
    """Drop log rows written after ``step`` by a run that died, so a resumed run's log has no duplicates."""
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def rotate(out: Path, keep: int | None) -> None:
    """Keep only the newest ``keep`` checkpoints."""
    if keep is None:
        return
    for _, path in checkpoints(out)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
