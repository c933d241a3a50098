"""Hypothesis strategies and checks shared by the fuzz tests.

Inputs come in two kinds:

* **arbitrary bytes**: ``st.binary()`` mixed with a soup of fragments that random bytes rarely hit (a BOM, NUL,
  invalid UTF-8, CRLF, ``[`` 1,500 deep, an integer of 5,000 digits, a JSON surrogate escape, a 200 KB line);
* **structurally plausible mutations**: a valid record, then one change (a field dropped, a wrong type, a wrong
  role, an empty string, nested garbage, a number as a string, bidi controls and ZWNJ in the text, ...). Each
  generated record says whether it is still *valid by construction*; a valid one must come out unchanged.

``check_error`` is the one property every error must have: a ``FatuneError`` whose message is one line that
starts with ``FILE:LINE: `` (or ``FILE: JSON.path: ``, or ``FILE: `` for the whole file).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from hypothesis import strategies as st

from fatune.errors import DataError, FatuneError

PERSIAN = "ابپتثجچحخدذرزژسشصضطظعغفقکگلمنوهیآأؤإئۀة"
# Characters that trip text handling: Arabic yeh/kaf (normalized), tatweel, ZWNJ/ZWJ, bidi controls, BOM, NUL,
# line/paragraph separators, NEL, NBSP, presentation forms, harakat, Persian and Arabic-Indic digits.
SPECIAL = ["\u064a", "\u0643", "\u0649", "\u0640", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b",
           "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\ufeff", "\x00", "\u2028",
           "\u2029", "\x85", "\xa0", "\ufe8e", "\ufb8f", "\u064b", "\u0670", "۱", "٣", "\r", "\t", "\n", " ", '"',
           "\\", "{", "}", "[", "]", ":", ",", "a", "Z", "7", "😀"]
chars = st.sampled_from(list(PERSIAN) + SPECIAL) | st.characters(exclude_categories=("Cs",))
text = st.text(alphabet=chars, max_size=30)
# Valid message content: at least one Persian letter, so it is non-blank before and after normalization.
content = st.builds(lambda before, letter, after: before + letter + after, text, st.sampled_from(PERSIAN), text)
blank = st.sampled_from(["", " ", "\t", "\xa0", "\u2028", "\u3000", " \n ", "\r\n"])
huge = st.builds(lambda piece, n: piece * n, st.sampled_from(["س", "ab", "\u200c"]), st.integers(50_000, 120_000))

# Fragments random bytes would take forever to produce.
FRAGMENTS = [b"\xef\xbb\xbf", b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\r\n", b"\n", b"\r", b"\t", b" ",
             b'{"messages": [', b'{"role": "user", "content": "', b'{"role": "assistant", "content": "x"}',
             b'"conversations"', b'{"from": "gpt", "value": "', b'"}', b"]}", b"[", b"]", b"{", b"}", b",", b":",
             b'"', b"\\", b'"\\ud800"', b"null", b"true", b"1e999", b"NaN", b"-", "سلام".encode(),
             b"[" * 1500, b"{\"a\":" * 1200, b"9" * 5000, b"x" * 200_000, b"\t\t\t", b'"a\tb"', b'"\n"', b"e", b"c",
             "\u00a0".encode(), "\u2028".encode(), "\u3000".encode(), "\u0640\u200c".encode()]
soup = st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=20), max_size=12).map(b"".join)
arbitrary_bytes = st.binary(max_size=300) | soup


@contextmanager
def scratch():
    """A fresh folder per example (pytest's tmp_path is one per test, and hypothesis runs many examples)."""
    folder = Path(tempfile.mkdtemp(prefix="fatune-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_error(error: BaseException, names: list[str], lines: set | None = None) -> None:
    """The message contract of every error a loader raises.

    ``names``: the file names the message may start with; ``lines``: where a ``DataError`` may point (line
    numbers or JSON paths of records), None to accept any location in the file."""
    assert isinstance(error, FatuneError), f"{type(error).__name__} escaped: {error}"
    check_message(str(error), names)
    if isinstance(error, DataError) and lines is not None:
        assert error.line in lines, f"{error.line!r} is not the location of a record in {sorted(lines, key=str)}"


def check_message(message: str, names: list[str]) -> None:
    """One line, ``FILE:LINE: problem`` (or ``FILE: JSON.path: ``, ``FILE: ``), of readable length."""
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    assert "Traceback" not in message
    start = next((name for name in sorted(names, key=len, reverse=True) if message.startswith(name)), None)
    assert start is not None, f"{message[:300]!r} does not start with one of {names}"
    rest = message[len(start):]
    assert re.match(r"(:\d+: |: data\[\d+\](\.paragraphs\[\d+\](\.qas\[\d+\])?)?: |: )\S", rest), \
        f"no FILE:LINE location: {message[:300]!r}"
    # The problem is named in a readable line: quoted values are cut (short_repr), so the message stays short
    # even when the input holds a 200 KB line.
    assert len(rest) < 600, f"message of {len(rest)} characters: {message[:300]!r}..."


def check_valid(messages: list[dict], purpose: str) -> None:
    """What every conversation a loader yields must be, checked independently of ``validate.py``."""
    assert messages, "an empty conversation was yielded"
    roles = [m["role"] for m in messages]
    assert all(set(m) == {"role", "content"} for m in messages), messages
    turns = roles[1:] if roles[0] == "system" else roles
    assert turns, "only a system message"
    assert turns == ["user", "assistant"] * (len(turns) // 2) + ["user"] * (len(turns) % 2), roles
    if purpose == "train":
        assert "assistant" in turns
    else:
        assert turns[-1] == "user"
    for message in messages:
        assert isinstance(message["content"], str) and message["content"].strip(), message
        message["content"].encode("utf-8")  # no lone surrogate: tokenizers and file writers need real text


def check_load(source, names: list[str], expect: dict, purpose: str = "train", normalize: bool = False,
               locations: set | None = None, strict_prefix: bool = True, fatal_ok: bool = False, **kwargs) -> list:
    """Load ``source`` twice (stopping at the first bad record, then skipping bad records) and check both.

    ``expect`` maps each record's location (line number, JSON path), in file order, to ``(kind, messages)``:
    kind ``valid`` (must come out, equal to ``messages``), ``invalid`` (must not), ``maybe`` (may be refused,
    but if it comes out it must equal ``messages``) or ``either``. ``locations``: where errors may point besides
    the records' locations. ``strict_prefix=False`` for a loader that checks the whole file before yielding
    (translation pairs' alignment). ``fatal_ok``: the file may be unreadable as a whole (otherwise it is
    well-formed by construction, and an error that stops the load with ``skip_invalid`` is a failure). Checked:

    * skipping: every valid record kept, unchanged; no invalid one kept; kept + counted skips == records in;
    * stopping: the records before the error came out; the error is the first one the skipping load counted;
    * an error that stops both loads (an unreadable file) is a one-line ``FILE:LINE`` error too;
    * every conversation that comes out passes ``check_valid``.
    Returns the conversations of the skipping load.
    """
    from fatune.data import LoadStats, load_conversations

    lines = list(expect)
    order = {line: i for i, line in enumerate(lines)}
    allowed = set(lines) | (locations or set())

    stats, kept, fatal = LoadStats(), [], None
    try:
        for conversation in load_conversations(source, purpose=purpose, normalize=normalize, skip_invalid=True,
                                               stats=stats, **kwargs):
            kept.append(conversation)
    except FatuneError as error:
        fatal = error
        check_error(error, names)
        assert fatal_ok, f"a well-formed file failed as a whole: {error}"
    strict, error = [], None
    try:
        for conversation in load_conversations(source, purpose=purpose, normalize=normalize, **kwargs):
            strict.append(conversation)
    except FatuneError as raised:
        error = raised
    for conversation in kept + strict:
        check_valid(conversation.messages, purpose)
        kind, messages = expect.get(conversation.line, ("missing", None))
        assert kind in ("valid", "maybe", "either"), f"record at {conversation.line!r} ({kind}) came out: " \
            f"{str(conversation)[:500]}"
        if kind in ("valid", "maybe"):
            assert conversation.messages == messages, (conversation.line, conversation.messages, messages)
    for message in stats.first_error.values():  # what the skip report shows
        check_message(message, names)

    if fatal is not None:
        assert error is not None, "the file failed only when bad records were skipped"
        check_error(error, names)
        return kept
    kept_lines = [c.line for c in kept]
    assert kept_lines == sorted(kept_lines, key=order.__getitem__), "records came out of order"
    missing = [line for line in lines if expect[line][0] == "valid" and line not in kept_lines]
    assert not missing, f"valid records dropped: {missing}"
    assert stats.kept == len(kept)
    assert len(kept) + sum(stats.skipped.values()) == len(lines), \
        f"{len(lines)} records in, {len(kept)} kept + {dict(stats.skipped)} skipped"
    if error is None:
        assert not stats.skipped and [c.line for c in strict] == kept_lines
    else:
        check_error(error, names, allowed if isinstance(error, DataError) else None)
        assert isinstance(error, DataError) and stats.first_error.get(error.reason) == str(error), \
            (str(error), stats.first_error)
        if error.line in order and strict_prefix:
            assert [c.line for c in strict] == [line for line in kept_lines if order[line] < order[error.line]]
    return kept
