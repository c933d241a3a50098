"""Load conversations from files, datasets directories, parquet, FarsTail TSV or the Hugging Face Hub.

``load_conversations(source)`` is the single entry point. It reads records lazily, validates each one
(``validate.parse_record``), normalizes Persian text when asked, and yields ``Conversation`` objects
that remember where they came from, so later steps can still point at ``FILE:LINE``.
For JSONL the line is the file's line number; for parquet, datasets and hub sources it is the row
number (1-based).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator

from fatune.data.normalize import normalize_persian
from fatune.data.validate import Purpose, parse_record
from fatune.errors import DataError, FatuneError
from fatune.hub import first_line, offline_unless_reachable

log = logging.getLogger(__name__)
SAMPLE_ALIAS = "fatune:sample"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class Conversation:
    """One validated conversation and where it came from."""

    messages: list[dict[str, str]]
    source: str = ""
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.messages}


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


def local_path(source: str | Path) -> Path:
    """The local path a source names (the bundled sample for ``fatune:sample``)."""
    return sample_path() if str(source) == SAMPLE_ALIAS else Path(source).expanduser()


def load_conversations(source: str | Path, *, purpose: Purpose = "train", skip_invalid: bool = False,
                       normalize: bool | None = None, split: str = "train", stats: LoadStats | None = None,
                       farstail_system: str | None = None, digits: str | None = None) -> Iterator[Conversation]:
    """Yield validated conversations from ``source``.

    ``source``: a JSONL file (SlimOrca ``messages``, bare message lists or ShareGPT lines), a parquet
    file, a ``datasets`` directory (``save_to_disk``), a FarsTail ``.tsv``, ``fatune:sample`` (the
    bundled sample) or a Hugging Face Hub dataset id.
    ``purpose``: ``"train"`` needs an assistant turn; ``"prompt"`` needs the last turn to be the user's.
    ``skip_invalid``: keep going past bad records; they are counted in ``stats`` and logged at the end.
    ``normalize``: apply ``normalize_persian`` to every content; defaults to on for training data.
    ``digits``: optional digit unification passed to ``normalize_persian`` (``"persian"`` or ``"latin"``).
    ``split``: which split to read from a ``DatasetDict`` directory or a hub dataset.
    """
    stats = stats if stats is not None else LoadStats()
    normalize = (purpose == "train") if normalize is None else normalize
    name, records = _open(source, split, farstail_system)
    try:
        for line, record in records(skip_invalid, stats):
            try:
                messages = parse_record(record, name, line, purpose)
            except DataError as error:
                if not skip_invalid:
                    raise
                _count(stats, error)
                continue
            if normalize:
                messages = [{"role": m["role"], "content": normalize_persian(m["content"], digits)} for m in messages]
            stats.kept += 1
            yield Conversation(messages, name, line)
    finally:
        if stats.skipped:
            log.warning("%s: %s", name, stats.summary())


def _count(stats: LoadStats, error: DataError) -> None:
    stats.skipped[error.reason] += 1
    stats.first_error.setdefault(error.reason, error.format())


def _open(source: str | Path, split: str, farstail_system: str | None):
    """Pick a reader for ``source``; return its display name and a ``(skip_invalid, stats) -> rows`` function."""
    path = local_path(source)
    name = str(path) if str(source) == SAMPLE_ALIAS else str(source)
    if path.is_dir():
        return name, lambda skip, stats: _read_datasets_dir(path, split)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return name, lambda skip, stats: _read_parquet(path)
        if suffix == ".tsv":
            from fatune.data.farstail import read_farstail
            return name, lambda skip, stats: read_farstail(path, name, skip, stats, farstail_system)
        return name, lambda skip, stats: _read_jsonl(path, name, skip, stats)
    if is_hub_id(name):
        return name, lambda skip, stats: _read_hub(name, split)
    raise FatuneError(f"{name}: no such file or directory (and not a hub dataset id like 'owner/name')")


def _read_jsonl(path: Path, name: str, skip_invalid: bool, stats: LoadStats) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_json)``; undecodable or unparsable lines become ``DataError``s."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                bad = raw[error.start]
                problem = DataError(name, number, f"invalid UTF-8: byte 0x{bad:02x} at byte {error.start + 1} "
                                    "of the line; save the file as UTF-8", None, "invalid_utf8")
                if not skip_invalid:
                    raise problem from None
                _count(stats, problem)
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                problem = DataError(name, number, f"not valid JSON: {error.msg} at column {error.colno}",
                                    None, "invalid_json")
                if not skip_invalid:
                    raise problem from None
                _count(stats, problem)
                continue
            yield number, record


def _rows(rows: Iterable[dict]) -> Iterator[tuple[int, Any]]:
    for number, row in enumerate(rows, 1):
        yield number, row


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    yield from _rows(row for batch in table.to_batches(max_chunksize=1024) for row in batch.to_pylist())


def _read_datasets_dir(path: Path, split: str) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise FatuneError(f"{path}: not a datasets directory saved with save_to_disk ({error})") from None
    yield from _rows(_pick_split(loaded, split, str(path)))


def is_hub_id(source: str | Path) -> bool:
    """True for ``owner/name`` that is not a local path (checked by the caller)."""
    name = str(source)
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~"))


def hub_dataset(dataset_id: str, split: str):
    """``datasets.load_dataset(dataset_id, split=split)``, failing offline with one clear sentence."""
    import datasets

    try:
        with offline_unless_reachable():
            return datasets.load_dataset(dataset_id, split=split)
    except Exception as error:  # datasets raises many types offline; the user needs one sentence
        reason = first_line(error)
        if "OfflineMode" in reason or "offline" in reason.lower():
            reason = "the Hub cannot be reached from this machine and the datasets cache has no copy"
        raise FatuneError(
            f"{dataset_id}: could not load this Hugging Face Hub dataset ({reason}). Without internet access, "
            "download it on a connected machine with datasets.load_dataset(...).save_to_disk(DIR) or as "
            "JSONL, and pass that local path instead.") from None


def _read_hub(dataset_id: str, split: str) -> Iterator[tuple[int, Any]]:
    yield from _rows(hub_dataset(dataset_id, split))


def _pick_split(loaded, split: str, name: str):
    if hasattr(loaded, "keys"):  # a DatasetDict
        if split not in loaded:
            raise FatuneError(f"{name}: has no split {split!r}; it has {', '.join(loaded.keys())}")
        return loaded[split]
    return loaded
