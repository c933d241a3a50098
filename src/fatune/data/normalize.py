"""Persian text normalization: a pure function, ``normalize_persian(text)``.

It rewrites exactly these things and nothing else:

* Arabic yeh (U+064A) and alef maksura (U+0649) become Persian yeh (U+06CC); Arabic kaf (U+0643)
  becomes keheh (U+06A9). Translated and scraped Persian mixes them, and to a tokenizer ``كتاب``
  and ``کتاب`` are different words.
* Tatweel (U+0640, the stretching stroke) is removed.
* Arabic presentation forms (U+FB50-U+FDFF, U+FE70-U+FEFF), the positional glyphs that old PDFs and
  fonts leak into text, become their base letters (``ﻛﺘﺎﺏ`` -> ``کتاب``).
* Runs of ZWNJ (U+200C) collapse to one, and a ZWNJ that does not sit between two letters (next to a
  space, punctuation, a digit or the text's edge) is dropped. A ZWNJ inside a word (``می‌خواهم``) stays.
* Optionally, digits are unified (``digits="persian"`` or ``"latin"``); off by default.

No global Unicode normalization is applied on purpose: NFKC would rewrite ``x²`` to ``x2`` and NFC/NFD
would decompose ``ۀ``. Persian and Arabic-Indic digits, spaces and Latin text are left as they are.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

ZWNJ = "\u200c"
_YEH, _KEHEH = "\u06cc", "\u06a9"


def _build_table() -> dict[int, str]:
    table: dict[int, str] = {0x064A: _YEH, 0x0649: _YEH, 0x0643: _KEHEH, 0x0640: ""}
    for block in (range(0xFB50, 0xFE00), range(0xFE70, 0xFF00)):
        for code in block:
            char = chr(code)
            base = unicodedata.normalize("NFKC", char)
            if base == char or not unicodedata.name(char, "").startswith("ARABIC"):
                continue  # unassigned code points and the BOM (U+FEFF) stay as they are
            # A presentation form of Arabic yeh/kaf decomposes to the Arabic letter: map it on to Persian.
            table[code] = base.translate({0x064A: _YEH, 0x0649: _YEH, 0x0643: _KEHEH, 0x0640: ""})
    return table


_TABLE = _build_table()
# A "letter" for the ZWNJ rule: any Unicode letter, or an Arabic-script combining mark (harakat,
# hamza above, superscript alef), which sit on letters inside words.
_LETTER = r"[^\W\d_]|[\u064B-\u065F\u0670]"
_ZWNJ_RUN = re.compile(ZWNJ + "{2,}")
_ZWNJ_AT_EDGE = re.compile(f"(?<!{_LETTER}){ZWNJ}|{ZWNJ}(?!{_LETTER})")

_PERSIAN_DIGITS = "۰۱۲۳۴۵۶۷۸۹"
_ARABIC_DIGITS = "٠١٢٣٤٥٦٧٨٩"
_DIGIT_TABLES = {
    # Arabic-Indic digits to Persian; Latin digits stay (Persian text legitimately uses them: 1892).
    "persian": str.maketrans(_ARABIC_DIGITS, _PERSIAN_DIGITS),
    "latin": str.maketrans(_PERSIAN_DIGITS + _ARABIC_DIGITS, "0123456789" * 2),
}


def normalize_persian(text: str, digits: Literal["persian", "latin"] | None = None) -> str:
    """Return ``text`` with Persian letter forms unified; see the module docstring for the exact rules.

    ``digits``: ``None`` (default) keeps every digit; ``"persian"`` turns Arabic-Indic digits into
    Persian ones; ``"latin"`` turns Persian and Arabic-Indic digits into ASCII.
    """
    text = text.translate(_TABLE)
    if ZWNJ in text:
        text = _ZWNJ_AT_EDGE.sub("", _ZWNJ_RUN.sub(ZWNJ, text))
    if digits is not None:
        if digits not in _DIGIT_TABLES:
            raise ValueError(f"digits must be None, 'persian' or 'latin', not {digits!r}")
        text = text.translate(_DIGIT_TABLES[digits])
    return text
