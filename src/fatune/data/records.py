"""What every record reader shares: where a source's file lives, which rows a selector keeps, and the
count of skipped records.

``sources.load_conversations`` picks a reader for each format (``farstail``, ``sib200``, ``squad``,
``translation``, ``tsv``, its own JSONL and parquet readers), and every reader needs these pieces too.
They live here, below both, so imports go one way: ``sources`` -> the readers -> ``records``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from fatune.errors import DataError, FatuneError

SAMPLE_ALIAS = "fatune:sample"
TASKS_PREFIX = "fatune:tasks/"
T = TypeVar("T")


@dataclass
class LoadStats:
    """What a load kept and what it skipped, by reason (filled in while iterating)."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_error: dict[str, str] = field(default_factory=dict)  # reason -> first message, for reports

    def summary(self) -> str:
        if not self.skipped:
            return f"kept {self.kept} conversations, skipped none"
        parts = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common())
        return f"kept {self.kept} conversations, skipped {sum(self.skipped.values())} ({parts})"


def sample_path() -> Path:
    """The bundled Persian chat sample (written by the fatune project, Apache-2.0)."""
    return Path(str(resources.files("fatune.data") / "sample" / "persian_chat.jsonl"))


def tasks_dir() -> Path:
    """The bundled task-data subsets (PQuAD, SIB-200, FarsTail, NTREX; see ``tasks/README.md``)."""
    return Path(str(resources.files("fatune.data") / "tasks"))


def local_path(source: str | Path) -> Path:
    """The local path a source names (``fatune:sample`` and ``fatune:tasks/REL`` are bundled files)."""
    text = str(source)
    if text == SAMPLE_ALIAS:
        return sample_path()
    if text.startswith(TASKS_PREFIX):
        return tasks_dir() / text[len(TASKS_PREFIX):]
    return Path(source).expanduser()


def display_name(source: str) -> str:
    """How errors name a source: the resolved path for the bundled aliases, the string otherwise."""
    return str(local_path(source)) if source == SAMPLE_ALIAS or source.startswith(TASKS_PREFIX) else source


def select_rows(items: Iterable[T], rows: slice | None, name: str, unit: str = "records"
                ) -> Iterator[tuple[int, T]]:
    """Yield ``(index, item)`` for the 0-based ``rows`` of ``items``; stop reading after the last one.

    A selection that starts past the end is an error naming the source, so a typo never trains on nothing.
    """
    start = 0 if rows is None or rows.start is None else rows.start
    stop = None if rows is None else rows.stop
    count = 0
    for index, item in enumerate(items):
        if stop is not None and index >= stop:
            return
        count = index + 1
        if index >= start:
            yield index, item
    if start > 0 and count <= start:
        selector = f"#{start}:{'' if stop is None else stop}"
        raise FatuneError(f"{name}: the selector {selector} starts at {unit[:-1]} {start} (0-based) but the "
                          f"source has only {count} {unit}")


def skip_or_raise(error: DataError, skip_invalid: bool, stats: LoadStats | None) -> None:
    """Raise ``error``, or count it in ``stats`` when bad records are being skipped."""
    if not skip_invalid:
        raise error from None  # the DataError says it all; no "during handling" chain
    if stats is not None:
        stats.skipped[error.reason] += 1
        stats.first_error.setdefault(error.reason, error.format())
