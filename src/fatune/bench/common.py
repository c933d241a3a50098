"""What every benchmark shares: machine and version info, the command line, readable tables, the JSON
report, and running a child process to measure its own peak RSS. The library versions and the RSS
arithmetic are ``fatune.environment``'s, which runs and evaluations record too."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

from fatune.environment import LIBRARIES, library_versions, max_rss_bytes
from fatune.errors import FatuneError


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """``{"machine", "torch", "transformers", "peft", "trl", "python", "date"}`` plus fatune's version and
    torch's thread count: what a reader needs to compare a figure with their own."""
    from fatune import __version__

    info = {"machine": f"{cpu_model()}, {os.cpu_count()} cores"}
    info.update(library_versions((*LIBRARIES, "trl")))
    info["python"] = platform.python_version()
    info["date"] = datetime.now().astimezone().isoformat(timespec="seconds")
    info["fatune"] = __version__
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as a user would retype it: ``fatune bench ...``."""
    return shlex.join(["fatune", *(sys.argv[1:] if argv is None else argv)])


def write_report(report: dict, out: str | Path | None) -> Path | None:
    """Write ``report`` as indented JSON to ``out`` (through a temporary file); nothing when ``out`` is None."""
    if not out:
        return None
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain-text table, numbers right-aligned, text left-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) and not isinstance(row[i], bool) for row in rows if row[i] is not None)
               for i in range(len(headers))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def gb(n_bytes: int | float | None) -> float | None:
    """Bytes as GB (10^9), two decimals, as docs/benchmarks.md writes them."""
    return None if n_bytes is None else round(n_bytes / 1e9, 2)


def positive(value: int | None, option: str) -> None:
    """A count option must be > 0 (a FatuneError, so the CLI prints one line and exits 2)."""
    if value is not None and value <= 0:
        raise FatuneError(f"{option} must be a positive number, not {value}")


@dataclass
class ChildResult:
    returncode: int
    peak_rss_bytes: int
    seconds: float
    log: Path | None


def run_child(args: Sequence[str], log: str | Path | None = None, env: dict | None = None) -> ChildResult:
    """Run ``args`` as a child process and return its own peak RSS (``wait4``'s ``ru_maxrss``).

    Each child's figure is its own, unlike ``RUSAGE_CHILDREN``, which is the largest of all children
    waited for so far. stdout and stderr go to ``log`` (or are discarded)."""
    started = time.perf_counter()
    with open(log, "wb") if log else open(os.devnull, "wb") as sink:
        process = subprocess.Popen(list(map(str, args)), stdout=sink, stderr=subprocess.STDOUT,
                                   env=None if env is None else {**os.environ, **env})
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildResult(process.returncode, max_rss_bytes(usage), time.perf_counter() - started,
                       Path(log) if log else None)


def log_tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
