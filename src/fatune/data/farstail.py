"""FarsTail (Persian NLI) TSV rows as chat conversations in the seed's format.

A row ``premise<TAB>hypothesis<TAB>label`` (label ``e``/``n``/``c``) becomes:

* a system prompt;
* a user turn: the premise, the question line, the hypothesis and the options line
  ``گزینه‌ها: 1. بله 2. نمی‌توان گفت 3. خیر``;
* the assistant answer ``1. بله`` (entailment), ``2. نمی‌توان گفت`` (neutral) or ``3. خیر`` (contradiction).

This is exactly the layout of the seed write-up's NLI example, so models trained on Persian SlimOrca
are asked FarsTail questions the way they saw them. The evaluation reuses ``OPTIONS`` and ``ANSWERS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from fatune.data.records import skip_or_raise
from fatune.data.tsv import read_text, tsv_rows
from fatune.data.validate import short_repr
from fatune.errors import DataError

SYSTEM_PROMPT = ("شما یک دستیار هوش مصنوعی هستید. متن و جمله را با دقت بخوانید و "
                 "گزینهٔ درست را انتخاب کنید.")
QUESTION = "تعیین کنید آیا جمله بر اساس متن زیر درست است یا نه"
OPTIONS = "گزینه‌ها: 1. بله 2. نمی‌توان گفت 3. خیر"
ANSWERS = {"e": "1. بله", "n": "2. نمی‌توان گفت", "c": "3. خیر"}
REQUIRED_COLUMNS = ("premise", "hypothesis", "label")


def nli_conversation(premise: str, hypothesis: str, label: str | None,
                     system: str | None = SYSTEM_PROMPT) -> dict:
    """One FarsTail row as ``{"messages": [...]}``; ``label=None`` gives a prompt with no answer."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{premise.strip()}\n{QUESTION}\n{hypothesis.strip()}\n{OPTIONS}"})
    if label is not None:
        messages.append({"role": "assistant", "content": ANSWERS[label]})
    return {"messages": messages}


def read_farstail(path: Path, name: str, skip_invalid: bool, stats, system: str | None = None,
                  rows: slice | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, {"messages": ...})`` for each row (of the 0-based ``rows``) of a FarsTail TSV."""
    system = SYSTEM_PROMPT if system is None else system
    # read_text decodes with utf-8-sig: a BOM used to stay in the first column's name and fail the header
    # check with "found ['\ufeffpremise', ...]" (SIB-200's reader already dropped it).
    with read_text(Path(path), name) as handle:
        needs = f"a FarsTail TSV needs the columns {', '.join(REQUIRED_COLUMNS)}"
        for line, row in tsv_rows(handle, name, REQUIRED_COLUMNS, needs, rows, skip_invalid, stats):
            label = row["label"].strip()
            # An empty premise or hypothesis still made a non-empty user turn (the question and options lines)
            # and so a valid-looking conversation that asks about nothing (found by fuzzing).
            empty = next((column for column in ("premise", "hypothesis") if not row[column].strip()), None)
            if label not in ANSWERS:
                error = DataError(name, line, f"unknown label {short_repr(label)}; expected e, n or c", "label",
                                  "bad_label")
            elif empty is not None:
                error = DataError(name, line, f"the {empty} is empty", empty, "empty_content")
            else:
                yield line, nli_conversation(row["premise"], row["hypothesis"], label, system)
                continue
            skip_or_raise(error, skip_invalid, stats)
