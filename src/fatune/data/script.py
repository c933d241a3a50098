"""Script statistics for Persian text: how much of it is written in Persian (Arabic) script.

Shared by ``data inspect`` and the evaluation's Persian-share metric so both count letters the same way.
"""

from __future__ import annotations

import re

# Arabic-script letters as used for Persian: the Arabic block, its supplement and the presentation forms.
_PERSIAN_LETTER = re.compile(r"[\u0600-\u06FF\u0750-\u077F\uFB50-\uFDFF\uFE70-\uFEFF]")
# A word: a letter, then letters, Arabic combining marks or ZWNJ.
_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|[\u064B-\u065F\u0670\u200c])*")


def letter_counts(text: str) -> tuple[int, int]:
    """``(persian_script_letters, all_letters)``; digits, marks, spaces and punctuation are not letters."""
    letters = [c for c in text if c.isalpha()]
    return sum(1 for c in letters if _PERSIAN_LETTER.match(c)), len(letters)


def has_persian_letter(text: str) -> bool:
    """True when ``text`` holds at least one Persian-script letter."""
    return any(c.isalpha() and _PERSIAN_LETTER.match(c) for c in text)


def persian_share(text: str) -> float:
    """Share of letters in Persian script, in [0, 1]; 0.0 for text with no letters."""
    persian, total = letter_counts(text)
    return persian / total if total else 0.0


def persian_words(text: str) -> list[str]:
    """Runs of Persian-script letters (ZWNJ kept inside), e.g. ``می‌خواهم``; digits and punctuation split."""
    return [w.rstrip("\u200c") for w in _WORD.findall(text) if _PERSIAN_LETTER.match(w)]
