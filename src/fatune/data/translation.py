"""English -> Persian translation pairs from two line-aligned text files, as chat conversations.

A source string ``SRC+TGT`` (e.g. ``ntrex/eng-US.txt+ntrex/fas.txt``) names the English file and its
Persian translation, aligned line by line as NTREX-128 and FLORES ship them. ``read_pairs`` checks the
alignment before yielding anything: files of different lengths are a ``DataError`` (every later pair
would be misaligned, so nothing is worth training on), and an empty line on either side is a
``DataError`` at that file and line.

Conversation layout
-------------------
No system message. The user turn is ``TRANSLATION_INSTRUCTION``, a blank line and the English text;
the assistant answers with the Persian translation alone, so chrF/BLEU can score a generation as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from fatune.data.records import LoadStats, display_name, local_path, select_rows, skip_or_raise
from fatune.errors import DataError

TRANSLATION_INSTRUCTION = "این متن انگلیسی را به فارسی ترجمه کنید:"
"""The request of the user turn ("translate this English text into Persian:"), asked in Persian so
the model answers in Persian; the text follows after a blank line."""


def translation_prompt(text: str) -> list[dict[str, str]]:
    """The messages that ask for the Persian translation of the English ``text`` (one user turn)."""
    return [{"role": "user", "content": f"{TRANSLATION_INSTRUCTION}\n\n{text.strip()}"}]


def translation_conversation(source: str, target: str) -> dict:
    """One aligned pair as ``{"messages": [...]}``, answered with the Persian ``target``."""
    return {"messages": [*translation_prompt(source), {"role": "assistant", "content": target.strip()}]}


def _lines(path: Path, name: str) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(name, None, "no such file (a translation pair is SRC+TGT, two line-aligned text files)",
                        None, "missing_file") from None
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise DataError(name, line, "invalid UTF-8; save the file as UTF-8", None, "invalid_utf8") from None
    if text.endswith("\n"):
        text = text[:-1]
    # Split on newlines only: str.splitlines would also break at U+2028 and other separators inside a line.
    return [line.rstrip("\r") for line in text.split("\n")] if text else []


def read_pairs(src: str | Path, tgt: str | Path, rows: slice | None = None, skip_invalid: bool = False,
               stats: LoadStats | None = None) -> Iterator[tuple[int, str, str]]:
    """Yield ``(line_number, source_text, target_text)`` for the (``rows``-selected, 0-based) line pairs.

    ``src`` and ``tgt`` are paths or ``fatune:tasks/...`` aliases. With ``skip_invalid`` a pair with an
    empty side is counted in ``stats``; with files of different lengths the lines without a partner are.
    """
    src_name, tgt_name = display_name(str(src)), display_name(str(tgt))
    sources, targets = _lines(local_path(src), src_name), _lines(local_path(tgt), tgt_name)
    if len(sources) != len(targets):
        (longer, n_long), (shorter, n_short) = sorted([(src_name, len(sources)), (tgt_name, len(targets))],
                                                      key=lambda side: -side[1])
        error = DataError(longer, n_short + 1, f"{longer} has {n_long} lines but {shorter} has {n_short}; "
                          "the two files must be aligned line by line", None, "unaligned")
        if not skip_invalid:
            raise error
        for _ in range(n_long - n_short):  # every line without a partner is a lost record
            skip_or_raise(error, True, stats)
    pairs = list(zip(sources, targets))
    for index, (source, target) in select_rows(pairs, rows, f"{src_name}+{tgt_name}", "lines"):
        empty = [name for name, text in ((src_name, source), (tgt_name, target)) if not text.strip()]
        if empty:
            skip_or_raise(DataError(empty[0], index + 1, "empty line; every line needs its translation on the "
                                    "same line of the other file", None, "empty_line"), skip_invalid, stats)
            continue
        yield index + 1, source, target


def pair_records(src: str, tgt: str, rows: slice | None, skip_invalid: bool, stats: LoadStats
                 ) -> Iterator[tuple[int, dict]]:
    """``load_conversations``' reader: ``(line, conversation)``."""
    for line, source, target in read_pairs(src, tgt, rows, skip_invalid, stats):
        yield line, translation_conversation(source, target)
