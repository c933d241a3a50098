"""Record parsing and validation: one record in, a clean message list out, or a ``DataError``.

Accepted shapes (one per JSONL line or dataset row):

* Persian SlimOrca: ``{"messages": [{"role": ..., "content": ...}, ...]}``
* a bare list of messages, as the seed's own ``data.jsonl`` had;
* ShareGPT: ``{"conversations": [{"from": "system|human|gpt", "value": ...}, ...]}``.

Rules: roles are known; an optional system message comes first; then turns alternate user/assistant
starting with user; every content is a non-empty string. ``purpose="train"`` needs at least one
assistant turn; ``purpose="prompt"`` (generation and evaluation inputs) needs the last turn to be the user's.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fatune.errors import DataError

Purpose = Literal["train", "prompt"]
ROLES = ("system", "user", "assistant")
# ShareGPT's speaker names, and the OpenAI-style names some ShareGPT dumps use instead.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}
FORMAT_HINT = ('expected {"messages": [{"role", "content"}, ...]}, a list of messages, '
               'or {"conversations": [{"from", "value"}, ...]}')


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages quote what they found, and a record can hold a
    megabyte-long "role" or key (found by fuzzing); the message must stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_json(text: str) -> Any:
    """``json.loads(text)``, with every way it fails raised as a ``json.JSONDecodeError`` (``msg``, ``lineno``,
    ``colno``), so each reader turns one exception type into its ``DataError``.

    ``json.loads`` also raises a bare ``RecursionError`` for arrays or objects nested ~1000 deep and, since
    Python 3.11, a bare ``ValueError`` for an integer literal over 4300 digits (both found by fuzzing); they
    escaped the readers' ``except JSONDecodeError`` as tracebacks. Their position is unknown: line 1, column 1.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("arrays or objects nested too deeply", text, 0) from None
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise json.JSONDecodeError("a number has more than 4300 digits", text, 0) from None


def unpaired_surrogate(text: str) -> int | None:
    """The index of the first lone UTF-16 surrogate in ``text`` (None if there is none).

    JSON may spell one as an escape (``"\\ud800"``) and ``json.loads`` keeps it, but it is no character: it
    cannot be encoded as UTF-8, so the tokenizer and every file writer fail on it later with a traceback
    (found by fuzzing). Validation refuses it where the record is known."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def parse_record(record: Any, source: str, line: int | None, purpose: Purpose = "train"
                 ) -> list[dict[str, str]]:
    """Turn one raw record into a validated ``[{"role", "content"}, ...]`` list or raise ``DataError``."""
    def fail(message: str, field: str | None, reason: str):
        raise DataError(source, line, message, field, reason)

    if isinstance(record, dict) and "messages" in record:
        raw, prefix, role_key, text_key, role_map = record["messages"], "messages", "role", "content", None
    elif isinstance(record, dict) and "conversations" in record:
        raw, prefix, role_key, text_key, role_map = (record["conversations"], "conversations", "from",
                                                     "value", SHAREGPT_ROLES)
    elif isinstance(record, list):
        raw, prefix, role_key, text_key, role_map = record, "", "role", "content", None
    else:
        found = (f"an object with keys {short_repr(sorted(map(str, record))[:5], 120)}" if isinstance(record, dict)
                 else type(record).__name__)
        fail(f"unknown record shape: {FORMAT_HINT}; found {found}", None, "unknown_format")

    def where(i: int, key: str | None = None) -> str:
        item = f"{prefix}[{i}]" if prefix else f"[{i}]"
        return f"{item}.{key}" if key else item

    if not isinstance(raw, list):
        fail(f"must be a list of messages, found {type(raw).__name__}", prefix or None, "unknown_format")
    if not raw:
        fail("the conversation has no messages", prefix or None, "empty_conversation")

    messages = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            fail(f"a message must be an object, found {type(item).__name__}", where(i), "bad_message")
        for key in (role_key, text_key):
            if key not in item:
                fail(f"the message has no '{key}' field", where(i, key), "missing_field")
        role = item[role_key]
        if role_map is not None and isinstance(role, str):
            role = role_map.get(role, role)
        if role not in ROLES:
            known = ", ".join(sorted(role_map) if role_map else ROLES)
            fail(f"unknown role {short_repr(item[role_key])}; expected one of {known}", where(i, role_key),
                 "unknown_role")
        content = item[text_key]
        if not isinstance(content, str):
            fail(f"content must be a string, found {type(content).__name__}", where(i, text_key), "bad_content")
        if not content.strip():
            fail("content is empty", where(i, text_key), "empty_content")
        surrogate = unpaired_surrogate(content)
        if surrogate is not None:
            fail(f"content holds an unpaired surrogate {content[surrogate]!r} at character {surrogate + 1}, which "
                 "is not a character (a JSON escape like \\ud83d without its pair)", where(i, text_key), "bad_content")
        messages.append({"role": role, "content": content})

    _check_order(messages, purpose, fail, where, role_key)
    return messages


def _check_order(messages, purpose, fail, where, role_key) -> None:
    start = 1 if messages[0]["role"] == "system" else 0
    for i, message in enumerate(messages[start:], start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        role = message["role"]
        if role == expected:
            continue
        if role == "system":
            fail("a system message may only come first", where(i, role_key), "bad_order")
        hint = ""
        if i == start and role == "assistant" and len(messages) > i + 1 and messages[i + 1]["role"] == "user":
            hint = "; if it is a system prompt, give it the role 'system'"
        previous = f"after {messages[i - 1]['role']!r}" if i > start else "first"
        article = "an" if expected == "assistant" else "a"
        fail(f"expected {article} {expected!r} turn {previous}, found {role!r}{hint}", where(i, role_key), "bad_order")
    if len(messages) == start:
        fail("the conversation has only a system message", where(0, role_key), "empty_conversation")
    last = messages[-1]["role"]
    if purpose == "train" and not any(m["role"] == "assistant" for m in messages):
        fail("a training conversation needs at least one assistant turn", where(len(messages) - 1, role_key),
             "no_assistant")
    if purpose == "prompt" and last != "user":
        fail(f"a prompt must end with a user turn, found {last!r}", where(len(messages) - 1, role_key),
             "last_not_user")
