"""Load conversations from files, datasets directories, parquet, task data or the Hugging Face Hub.

``load_conversations(source)`` is the single entry point. It reads records lazily, validates each one
(``validate.parse_record``), normalizes Persian text when asked, and yields ``Conversation`` objects
that remember where they came from, so later steps can still point at ``FILE:LINE``.
For JSONL the line is the file's line number; for parquet, datasets and hub sources it is the row
number (1-based); for a SQuAD file it is the question's JSON path (``data[3].paragraphs[0].qas[5]``).

Source strings
--------------
* a path: JSONL (any other suffix), ``.parquet``, a ``datasets`` directory, a ``.tsv`` (FarsTail's
  ``premise/hypothesis/label`` or SIB-200's ``index_id/category/text``, told apart by the header) or a
  ``.json`` SQuAD 2.0 file (told apart from JSONL by its first key, ``version`` or ``data``);
* ``SRC+TGT``: two line-aligned text files, English and its Persian translation (a string that is
  itself an existing path is a file, not a pair);
* ``fatune:sample`` (the bundled chat sample), ``fatune:tasks/REL`` (the bundled task subsets) or a
  Hub dataset id ``owner/name``;
* any of them followed by a selector ``#START:END`` (a 0-based Python slice, either bound optional):
  articles of a SQuAD file (so training and evaluation can use disjoint articles), otherwise records
  (JSONL lines that are not blank, TSV rows after the header, line pairs, dataset rows).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from fatune.data.normalize import normalize_persian
from fatune.data.records import (
    TASKS_PREFIX,
    LoadStats,
    display_name,
    local_path,
    select_rows,
    skip_or_raise,
    tasks_dir,
)
from fatune.data.validate import Purpose, load_json, parse_record
from fatune.errors import DataError, FatuneError
from fatune.hub import first_line, offline_unless_reachable

log = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_SELECTOR = re.compile(r"#(\d*):(\d*)$")
_SQUAD_START = re.compile(r'\s*\{\s*"(version|data)"\s*:')


@dataclass
class Conversation:
    """One validated conversation and where it came from."""

    messages: list[dict[str, str]]
    source: str = ""
    line: int | str | None = None
    group: str | None = None  # conversations that must stay on one side of a split (SQuAD: FILE#article)

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.messages}


def parse_source(spec: str | Path) -> tuple[str, slice | None]:
    """Split ``PATH#START:END`` into the path string and a 0-based slice (None without a selector).

    Only a trailing ``#digits:digits`` is a selector, and not when the whole string is an existing path.
    """
    text = str(spec)
    match = _SELECTOR.search(text)
    if match is None or local_path(text).exists():
        return text, None
    path = text[:match.start()]
    start, stop = (int(g) if g else None for g in match.groups())
    if not path:
        raise FatuneError(f"{text}: a selector #START:END must follow a source, as in data.jsonl#0:100")
    if start is not None and stop is not None and stop <= start:
        raise FatuneError(f"{text}: the selector #{match.group(1)}:{match.group(2)} selects nothing; "
                          "write #START:END with START < END (0-based, END excluded)")
    return path, slice(start, stop)


def split_pair(text: str) -> tuple[str, str] | None:
    """``(SRC, TGT)`` when ``text`` names two aligned text files as ``SRC+TGT``; None otherwise."""
    if "+" not in text or local_path(text).exists():
        return None
    candidates = [(text[:i], text[i + 1:]) for i, char in enumerate(text) if char == "+"]
    for src, tgt in candidates:
        if local_path(src).is_file() and local_path(tgt).is_file():
            return src, tgt
    # One '+': surely meant as a pair, and the reader names the missing side.
    return candidates[0] if len(candidates) == 1 and all(candidates[0]) else None


def load_conversations(source: str | Path, *, purpose: Purpose = "train", skip_invalid: bool = False,
                       normalize: bool | None = None, split: str = "train", stats: LoadStats | None = None,
                       farstail_system: str | None = None, digits: str | None = None,
                       questions_per_chat: int = 1) -> Iterator[Conversation]:
    """Yield validated conversations from ``source``.

    ``source``: any source string of the module docstring (JSONL records may be SlimOrca ``messages``,
    bare message lists or ShareGPT lines), with an optional ``#START:END`` selector.
    ``purpose``: ``"train"`` needs an assistant turn; ``"prompt"`` needs the last turn to be the user's.
    ``skip_invalid``: keep going past bad records; they are counted in ``stats`` and logged at the end.
    ``normalize``: apply ``normalize_persian`` to every content; defaults to on for training data.
    ``digits``: optional digit unification passed to ``normalize_persian`` (``"persian"`` or ``"latin"``).
    ``split``: which split to read from a ``DatasetDict`` directory or a hub dataset.
    ``questions_per_chat``: for a SQuAD file, ask up to this many questions of a paragraph in one chat
    (``fatune.data.squad.qa_chat``); any other source refuses a value above 1.
    """
    stats = stats if stats is not None else LoadStats()
    normalize = (purpose == "train") if normalize is None else normalize
    path, rows = parse_source(source)
    name, records = _open(path, rows, split, farstail_system, questions_per_chat)
    try:
        # Readers yield (line, record) or, for grouped data, (line, record, group).
        for line, record, *group in records(skip_invalid, stats):
            try:
                messages = parse_record(record, name, line, purpose)
            except DataError as error:
                skip_or_raise(error, skip_invalid, stats)
                continue
            if normalize:
                messages = [{"role": m["role"], "content": normalize_persian(m["content"], digits)} for m in messages]
                # Normalization removes tatweel and stray ZWNJs, so a content of only those (valid above:
                # not whitespace) became "" and trained an empty turn (found by fuzzing): refuse it here.
                empty = next((i for i, m in enumerate(messages) if not m["content"].strip()), None)
                if empty is not None:
                    skip_or_raise(DataError(name, line, "content is empty after Persian normalization (it held "
                                            "only tatweel or ZWNJ characters)", f"messages[{empty}].content",
                                            "empty_content"), skip_invalid, stats)
                    continue
            stats.kept += 1
            yield Conversation(messages, name, line, group[0] if group else None)
    finally:
        if stats.skipped:
            log.warning("%s: %s", name, stats.summary())


def _sniff(path: Path, size: int = 4096) -> str:
    with open(path, "rb") as handle:
        return handle.read(size).decode("utf-8-sig", errors="replace")


def _open(source: str, rows: slice | None, split: str, farstail_system: str | None, questions_per_chat: int = 1):
    """Pick a reader for ``source``; return its display name and a ``(skip_invalid, stats) -> rows`` function."""
    name, records = _reader(source, rows, split, farstail_system, questions_per_chat)
    if questions_per_chat != 1 and not getattr(records, "squad", False):
        raise FatuneError(f"{name}: questions_per_chat={questions_per_chat} applies to SQuAD JSON files only; "
                          "remove it from this source")
    return name, records


def _reader(source: str, rows: slice | None, split: str, farstail_system: str | None, questions_per_chat: int):
    pair = split_pair(source)
    if pair is not None:
        from fatune.data.translation import pair_records

        src, tgt = pair
        return (f"{display_name(src)}+{display_name(tgt)}",
                lambda skip, stats: pair_records(src, tgt, rows, skip, stats))
    path = local_path(source)
    name = display_name(source)
    if path.is_dir():
        return name, lambda skip, stats: _rows(select_rows(_load_datasets_dir(path, split), rows, name, "rows"))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return name, lambda skip, stats: _rows(select_rows(_read_parquet(path), rows, name, "rows"))
        if suffix == ".tsv":
            # Any line end, as csv reads them: split on "\n" only, a file with CR line ends (old Mac) was one
            # long header, had no "text" column and was read as FarsTail (found by fuzzing).
            header = re.split(r"\r\n|\r|\n", _sniff(path), maxsplit=1)[0].split("\t")
            if "category" in header and "text" in header:
                from fatune.data.sib200 import sib200_records
                return name, lambda skip, stats: sib200_records(path, name, rows, skip, stats)
            from fatune.data.farstail import read_farstail
            return name, lambda skip, stats: read_farstail(path, name, skip, stats, farstail_system, rows)
        if suffix == ".json" and _SQUAD_START.match(_sniff(path)):
            from fatune.data.squad import squad_records

            def records(skip, stats):
                return squad_records(path, name, rows, skip, stats, questions_per_chat)
            records.squad = True  # _open checks that questions_per_chat reached a SQuAD reader
            return name, records
        return name, lambda skip, stats: _read_jsonl(path, name, skip, stats, rows)
    if source.startswith(TASKS_PREFIX):
        bundled = sorted(str(p.relative_to(tasks_dir())) for p in tasks_dir().rglob("*") if p.is_file()
                         and not p.name.lower().startswith(("license", "readme", "labels")))
        raise FatuneError(f"{source}: no such bundled task file; bundled: {', '.join(bundled) or 'none'}")
    if is_hub_id(source):
        return name, lambda skip, stats: _rows(select_rows(hub_dataset(source, split), rows, name, "rows"))
    raise FatuneError(f"{name}: no such file or directory (and not a hub dataset id like 'owner/name')")


def _read_jsonl(path: Path, name: str, skip_invalid: bool, stats: LoadStats, rows: slice | None = None
                ) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_json)``; undecodable or unparsable lines become ``DataError``s.

    ``rows`` selects records, counting every line that is not blank (bad ones too, so that skipping
    invalid records never shifts a selection).
    """
    with open(path, "rb") as handle:
        # A line is blank when it holds only ASCII whitespace (after the BOM on line 1): the same test for the
        # selector's count and for the reader. The reader used to skip lines that were blank by str.strip()
        # (a lone U+00A0 or U+2028), silently, though the selector counted them as records (found by fuzzing);
        # such a line is now an invalid record, reported and counted like any other.
        lines = ((number, raw) for number, raw in enumerate(handle, 1)
                 if (raw[3:] if number == 1 and raw.startswith(b"\xef\xbb\xbf") else raw).strip())
        for _, (number, raw) in select_rows(lines, rows, name, "records"):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                bad = raw[error.start]
                skip_or_raise(DataError(name, number, f"invalid UTF-8: byte 0x{bad:02x} at byte {error.start + 1} "
                                        "of the line; save the file as UTF-8", None, "invalid_utf8"),
                              skip_invalid, stats)
                continue
            try:
                record = load_json(text)
            except ValueError as error:  # load_json raises JSONDecodeError for every failure
                skip_or_raise(DataError(name, number, f"not valid JSON: {error.msg} at column {error.colno}",
                                        None, "invalid_json"), skip_invalid, stats)
                continue
            yield number, record


def _decoded(batches: Iterable[Any], path: Path, what: str) -> Iterator[Any]:
    """Rows of ``batches`` (arrow record batches, or a ``datasets.Dataset``'s rows), with a failure while decoding
    them (a damaged file: invalid UTF-8 in a string column, found by fuzzing) as one error naming ``path``."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator, None)
            if batch is None:
                return
            rows = batch.to_pylist() if hasattr(batch, "to_pylist") else [batch]
        except Exception as error:  # pyarrow and datasets raise several unrelated types for bad bytes
            raise FatuneError(f"{path}: {what} ({type(error).__name__}: {first_line(error)})") from None
        yield from rows


def _rows(rows: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    """``(index, row)`` from ``select_rows`` as ``(row_number, row)``, numbered from 1 in the whole source."""
    for index, row in rows:
        yield index + 1, row


def _read_parquet(path: Path) -> Iterator[Any]:
    import pyarrow.parquet as pq

    # A damaged or foreign file raised pyarrow's own exceptions (ArrowInvalid, OSError) as tracebacks (found
    # by fuzzing); the whole file is unreadable, so this is one error naming it.
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for bad bytes
        raise FatuneError(f"{path}: not a readable parquet file ({first_line(error)})") from None
    yield from _decoded(table.to_batches(max_chunksize=1024), path, "a damaged parquet file")


def _load_datasets_dir(path: Path, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise FatuneError(f"{path}: not a datasets directory saved with save_to_disk ({error})") from None
    except Exception as error:  # damaged state.json/dataset_info.json or arrow files (found by fuzzing)
        if _no_shards(path, split):
            return []
        if (path / split / "state.json").is_file():  # a DatasetDict: another split may be the unloadable one
            try:
                return _decoded(datasets.load_from_disk(str(path / split)), path, "a damaged datasets directory")
            except Exception:
                pass
        raise FatuneError(f"{path}: a damaged datasets directory ({type(error).__name__}: {first_line(error)}); "
                          "save it again with save_to_disk") from None
    return _decoded(_pick_split(loaded, split, str(path)), path, "a damaged datasets directory")


def _no_shards(path: Path, split: str) -> bool:
    """True for an empty dataset: datasets saves one with zero data files and then cannot load it back (an
    IndexError, found by fuzzing); it holds no rows, which is no error."""
    import json

    for state in (path / "state.json", path / split / "state.json"):
        try:
            if state.is_file() and json.loads(state.read_text()).get("_data_files") == []:
                return True
        except (OSError, ValueError, AttributeError):
            return False
    return False


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


def _pick_split(loaded, split: str, name: str):
    if hasattr(loaded, "keys"):  # a DatasetDict
        if split not in loaded:
            raise FatuneError(f"{name}: has no split {split!r}; it has {', '.join(loaded.keys())}")
        return loaded[split]
    return loaded
