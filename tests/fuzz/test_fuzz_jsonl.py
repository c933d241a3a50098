"""Fuzz the JSONL loaders (Persian SlimOrca ``messages``, bare message lists, ShareGPT), for training data and for
``fatune generate``'s prompt files (``purpose="prompt"``): arbitrary bytes and mutated records, line by line."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fatune.data.normalize import normalize_persian

from .strategies import arbitrary_bytes, blank, check_load, content, huge, scratch

pytestmark = pytest.mark.fuzz

SHAPES = {  # shape: (role key, text key, names of system/user/assistant)
    "messages": ("role", "content", {"system": ["system"], "user": ["user"], "assistant": ["assistant"]}),
    "bare": ("role", "content", {"system": ["system"], "user": ["user"], "assistant": ["assistant"]}),
    "sharegpt": ("from", "value", {"system": ["system"], "user": ["human", "user"], "assistant": ["gpt", "assistant"]}),
}
WRONG_ROLES = ["bot", "model", "tool", "function", "developer", "System", "USER", " user", "assistant ", "", "human",
               "gpt", "ربات", "user\u200c", "\u202euser", "r" * 3000]
WRONG_TYPES = [0, 1, -1.5, True, False, None, [], {}, ["user"], {"role": "user"}, "1", [[["deep"]]]]
GARBAGE = [None, 0, "text", [], {}, [[]], [[{"role": "user", "content": "x"}]], {"nested": {"a": [1, {"b": None}]}}]


@st.composite
def conversation(draw, purpose: str) -> list[dict]:
    """A valid conversation: an optional system message, then user/assistant turns (ending as ``purpose`` needs)."""
    turns = draw(st.integers(1, 5))
    if purpose == "train":
        turns = max(turns, 2)
    elif turns % 2 == 0:
        turns += 1  # a prompt ends with the user's turn
    roles = ["system"] * draw(st.booleans()) + [("user", "assistant")[i % 2] for i in range(turns)]
    return [{"role": role, "content": draw(content)} for role in roles]


@st.composite
def record(draw, purpose: str, normalize: bool) -> tuple[bytes, str, list | None]:
    """``(line bytes, kind, expected messages)``; kind is valid, invalid or either (see ``check_load``)."""
    messages = draw(conversation(purpose))
    shape = draw(st.sampled_from(sorted(SHAPES)))
    role_key, text_key, names = SHAPES[shape]
    raw = [{role_key: draw(st.sampled_from(names[m["role"]])), text_key: m["content"]} for m in messages]
    kind, ascii_only = "valid", False
    i = draw(st.integers(0, len(raw) - 1))
    mutation = draw(st.sampled_from([None, None, "extra", "number_text", "huge", "edge_chars", "drop", "role_type",
                                     "wrong_role", "content_type", "blank", "surrogate", "garbage_message",
                                     "container", "empty", "swap", "duplicate", "truncate", "bad_byte", "nul"]))
    if mutation == "extra":  # fields fatune does not read are ignored
        raw[i]["name"] = draw(st.sampled_from(["x", 1, None, {"a": []}]))
    elif mutation == "number_text":  # a number written as a string is text like any other
        raw[i][text_key] = messages[i]["content"] = draw(st.sampled_from(["123", "۱۲۳", "1e5", "-0", "NaN"]))
    elif mutation == "huge":  # a 100-200 KB line
        raw[i][text_key] = messages[i]["content"] = draw(huge) + messages[i]["content"]
    elif mutation == "edge_chars":  # only tatweel and ZWNJ: text, but nothing is left after normalization
        raw[i][text_key] = messages[i]["content"] = draw(st.sampled_from(["\u0640", "\u200c", "\u0640\u200c\u0640"]))
        kind = "invalid" if normalize else "valid"
    elif mutation == "drop":
        del raw[i][draw(st.sampled_from([role_key, text_key]))]
        kind = "invalid"
    elif mutation == "role_type":
        raw[i][role_key] = draw(st.sampled_from(WRONG_TYPES))
        kind = "invalid"
    elif mutation == "wrong_role":
        wrong = draw(st.sampled_from([r for r in WRONG_ROLES if r not in sum(names.values(), [])]))
        raw[i][role_key] = wrong
        kind = "invalid"
    elif mutation == "content_type":
        raw[i][text_key] = draw(st.sampled_from([t for t in WRONG_TYPES if not isinstance(t, str)]))
        kind = "invalid"
    elif mutation == "blank":
        raw[i][text_key] = draw(blank)
        kind = "invalid"
    elif mutation == "surrogate":  # "\ud800" in JSON: an escape json.loads accepts, but no character
        raw[i][text_key] = messages[i]["content"][:3] + "\ud800" + messages[i]["content"][3:]
        kind, ascii_only = "invalid", True
    elif mutation == "garbage_message":
        raw[i] = draw(st.sampled_from(GARBAGE))
        kind = "invalid"
    elif mutation == "container":  # the message list replaced by something else
        raw = draw(st.sampled_from(GARBAGE[:3] + [{"x": 1}]))
        kind = "invalid"
    elif mutation == "empty":
        raw = []
        kind = "invalid"
    elif mutation == "swap" and len(raw) > 1:
        j = min(i, len(raw) - 2)
        raw[j], raw[j + 1] = raw[j + 1], raw[j]
        kind = "invalid"
    elif mutation == "duplicate":
        raw.insert(i, dict(raw[i]) if isinstance(raw[i], dict) else raw[i])
        kind = "invalid"
    if shape == "messages":
        obj = {"messages": raw}
    elif shape == "sharegpt":
        obj = {"conversations": raw}
    else:
        obj = raw if isinstance(raw, list) else {"not_messages": raw}
        if not isinstance(raw, list):
            kind = "invalid"
    if mutation == "extra" and isinstance(obj, dict):
        obj["id"] = draw(st.sampled_from(["a", 7, None, [1, 2]]))
    line = json.dumps(obj, ensure_ascii=ascii_only or draw(st.booleans())).encode("utf-8")
    if mutation == "truncate":  # a proper prefix of a JSON object or array is never valid JSON
        line = line[:draw(st.integers(0, len(line) - 1))]
        kind = "invalid"
    elif mutation in ("bad_byte", "nul"):  # neither can appear in a JSON text encoded as UTF-8
        at = draw(st.integers(0, len(line)))
        line = line[:at] + (b"\xff" if mutation == "bad_byte" else b"\x00") + line[at:]
        kind = "invalid"
    if line.strip() == b"":  # an empty truncation is a blank line, not a record
        return line, "blank", None
    if normalize:
        messages = [{"role": m["role"], "content": normalize_persian(m["content"])} for m in messages]
    return line, kind, messages


def _item(purpose: str, normalize: bool):
    garbage = arbitrary_bytes.map(lambda b: (b.replace(b"\n", b""), "either", None))
    blanks = st.sampled_from([b"", b" ", b"\t", b"\r", b" \t\x0b\x0c "]).map(lambda b: (b, "blank", None))
    return st.one_of(record(purpose, normalize), record(purpose, normalize), blanks, garbage)


def _assemble(draw, items: list) -> tuple[bytes, dict]:
    """The file's bytes and ``{line: (kind, messages)}`` for its records."""
    bom = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf"]))
    data, expect = bytearray(bom), {}
    for number, (line, kind, messages) in enumerate(items, 1):
        content_bytes = line[3:] if number == 1 and not bom and line.startswith(b"\xef\xbb\xbf") else line
        if kind == "blank" or not content_bytes.strip():
            kind = "blank"  # only ASCII whitespace: not a record (the JSONL reader's rule)
        else:
            expect[number] = (kind, messages)
        last = number == len(items)
        data += line + (b"" if last and draw(st.booleans()) else draw(st.sampled_from([b"\n", b"\r\n"])))
    return bytes(data), expect


@st.composite
def jsonl_file(draw):
    purpose = draw(st.sampled_from(["train", "prompt"]))
    normalize = draw(st.booleans())
    items = draw(st.lists(_item(purpose, normalize), max_size=8))
    data, expect = _assemble(draw, items)
    return data, expect, purpose, normalize


@given(jsonl_file())
def test_jsonl_records_are_kept_or_reported(case):
    """Mutated records line by line: every valid record comes out unchanged, every bad one is reported at its
    line (or counted when skipping), nothing is dropped in silence. Prompt files are the same loader."""
    data, expect, purpose, normalize = case
    with scratch() as folder:
        path = folder / "data.jsonl"
        path.write_bytes(data)
        check_load(str(path), [str(path)], expect, purpose, normalize)


@given(arbitrary_bytes, st.sampled_from(["train", "prompt"]))
def test_jsonl_arbitrary_bytes(data, purpose):
    """Any bytes: records or one-line errors; each non-blank line is kept or counted as skipped."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the text after the last newline is no line
    expect = {}
    for number, line in enumerate(lines, 1):
        body = line[3:] if number == 1 and line.startswith(b"\xef\xbb\xbf") else line
        if body.strip():
            expect[number] = ("either", None)
    with scratch() as folder:
        path = folder / "prompts.jsonl"
        path.write_bytes(data)
        check_load(str(path), [str(path)], expect, purpose)
