"""SIB-200 topic classification TSV (``index_id``, ``category``, ``text``) as chat conversations.

SIB-200 labels FLORES-200 sentences with one of seven topics. ``read_sib200`` yields the rows of a
file; an unknown category is a ``DataError`` at its line (field ``category``).

Conversation layout
-------------------
No system message. The user turn is ``TOPIC_QUESTION`` (which lists the seven Persian labels in
``labels.txt`` order), a blank line and the sentence; the assistant answers with the Persian label
alone, e.g. ``ورزش``, so evaluation can score a generation by exact match against ``LABELS_FA``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from fatune.data.records import LoadStats, local_path, skip_or_raise
from fatune.data.tsv import read_text, tsv_rows
from fatune.data.validate import short_repr
from fatune.errors import DataError

LABELS_FA = {"science/technology": "علم و فناوری", "travel": "سفر", "politics": "سیاست", "sports": "ورزش",
             "health": "سلامت", "entertainment": "سرگرمی", "geography": "جغرافیا"}
"""SIB-200's English categories and their Persian labels, in the order of SIB-200's ``labels.txt``."""

TOPIC_QUESTION = ("موضوع این جمله کدام است؟ "
                  + "، ".join(list(LABELS_FA.values())[:-1]) + " یا " + list(LABELS_FA.values())[-1])
"""The question of the user turn, naming every label so the model answers with one of them verbatim:
``موضوع این جمله کدام است؟ علم و فناوری، سفر، سیاست، ورزش، سلامت، سرگرمی یا جغرافیا``."""

REQUIRED_COLUMNS = ("category", "text")


def topic_prompt(text: str) -> list[dict[str, str]]:
    """The messages that ask for ``text``'s topic (one user turn)."""
    return [{"role": "user", "content": f"{TOPIC_QUESTION}\n\n{text.strip()}"}]


def topic_conversation(text: str, category: str) -> dict:
    """One SIB-200 row as ``{"messages": [...]}``, answered with the Persian label of ``category``."""
    return {"messages": [*topic_prompt(text), {"role": "assistant", "content": LABELS_FA[category]}]}


def read_sib200(path: str | Path, name: str | None = None, rows: slice | None = None, skip_invalid: bool = False,
                stats: LoadStats | None = None) -> Iterator[tuple[int, str, str]]:
    """Yield ``(line_number, text, category)`` for the (``rows``-selected, 0-based) rows of a SIB-200 TSV."""
    path = local_path(path)
    name = name or str(path)
    with read_text(path, name) as handle:  # decoded whole, so that invalid UTF-8 is an error at its line
        needs = "a SIB-200 TSV needs the columns index_id, category, text"
        for line, row in tsv_rows(handle, name, REQUIRED_COLUMNS, needs, rows, skip_invalid, stats,
                                  strip_header=True):
            category, text = row["category"].strip(), row["text"]
            try:
                if category not in LABELS_FA:
                    raise DataError(name, line, f"unknown SIB-200 label {short_repr(category)}; expected one of "
                                    f"{', '.join(LABELS_FA)}", "category", "bad_label")
                if not text.strip():
                    raise DataError(name, line, "the text is empty", "text", "empty_content")
            except DataError as error:
                skip_or_raise(error, skip_invalid, stats)
                continue
            yield line, text, category


def sib200_records(path: Path, name: str, rows: slice | None, skip_invalid: bool, stats: LoadStats
                   ) -> Iterator[tuple[int, dict]]:
    """``load_conversations``' reader: ``(line, conversation)``."""
    for line, text, category in read_sib200(path, name, rows, skip_invalid, stats):
        yield line, topic_conversation(text, category)
