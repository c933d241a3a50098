"""What a result records about the machine it came from: library versions and peak memory.

A run's ``train_summary.json``, ``fatune eval``'s ``_meta`` and every ``fatune bench`` report carry the
versions of the libraries that produced them, and training and the bench's worker report the process's
peak memory. Each figure is computed here, once, so a run's summary and a benchmark of the same run
agree on what they mean (and a JSON file in ``docs/results`` keeps its keys).
"""

from __future__ import annotations

import platform
import resource
import subprocess
import sys
from pathlib import Path

# The libraries whose versions change fatune's numbers (speed, memory, losses).
LIBRARIES = ("torch", "transformers", "peft")


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, read from package metadata (no import: importing trl
    alone takes seconds), or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """``{name: version}`` for ``names``, in that order (None for one that is not installed)."""
    return {name: package_version(name) for name in names}


def git_commit() -> str | None:
    """The commit of the fatune checkout this code runs from, or None outside a git checkout."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                               cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def versions() -> dict:
    """What produced a run or an evaluation: ``{"fatune", "torch", "transformers", "peft", "python"}``, and
    ``git_commit`` when fatune runs from a git checkout."""
    from fatune import __version__

    found = {"fatune": __version__, **library_versions(), "python": platform.python_version()}
    commit = git_commit()
    if commit:
        found["git_commit"] = commit
    return found


def max_rss_bytes(usage: resource.struct_rusage) -> int:
    """``ru_maxrss`` of ``usage`` in bytes (Linux reports KiB, macOS bytes)."""
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def peak_memory_bytes() -> int:
    """This process's peak memory: the CUDA peak allocation on a GPU, the peak RSS on CPU."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return max_rss_bytes(resource.getrusage(resource.RUSAGE_SELF))
