"""Fuzz parquet files and ``datasets`` directories: mutated rows in a typed table, damaged files and folders."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .strategies import arbitrary_bytes, blank, check_error, check_load, check_valid, content, scratch

pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module", autouse=True)
def _imported():
    """Import pyarrow and datasets once before the examples, so the first one is not charged for it."""
    import datasets  # noqa: F401
    import pyarrow.parquet  # noqa: F401


ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


@st.composite
def rows(draw):
    """Rows of a ``messages: list<struct<role, content>>`` table and their expectations (by 1-based row number)."""
    result, expect = [], {}
    for number in range(1, draw(st.integers(0, 6)) + 1):
        turns = draw(st.integers(2, 5))
        roles = ["system"] * draw(st.booleans()) + [("user", "assistant")[i % 2] for i in range(turns)]
        messages = [{"role": role, "content": draw(content)} for role in roles]
        kind = "valid"
        i = draw(st.integers(0, len(messages) - 1))
        mutation = draw(st.sampled_from([None, None, "null_role", "null_content", "wrong_role", "blank", "empty",
                                         "null_messages", "swap"]))
        if mutation == "null_role":
            messages[i]["role"], kind = None, "invalid"
        elif mutation == "null_content":
            messages[i]["content"], kind = None, "invalid"
        elif mutation == "wrong_role":
            messages[i]["role"], kind = draw(st.sampled_from(["bot", "human", "", "User"])), "invalid"
        elif mutation == "blank":
            messages[i]["content"], kind = draw(blank), "invalid"
        elif mutation == "empty":
            messages, kind = [], "invalid"
        elif mutation == "null_messages":
            messages, kind = None, "invalid"
        elif mutation == "swap":
            j = min(i, len(messages) - 2)
            messages[j], messages[j + 1] = messages[j + 1], messages[j]
            kind = "invalid"
        result.append({"messages": messages})
        expect[number] = (kind, [dict(m) for m in messages] if kind == "valid" else None)
    return result, expect


def _table(records):
    import pyarrow as pa

    schema = pa.schema([("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))])
    return pa.Table.from_pylist(records, schema=schema)


@given(rows())
def test_parquet_rows_are_kept_or_reported(case):
    import pyarrow.parquet as pq

    records, expect = case
    with scratch() as folder:
        path = folder / "chat.parquet"
        pq.write_table(_table(records), path)
        check_load(str(path), [str(path)], expect)


@given(rows(), st.sampled_from(["save", "truncate", "flip", "junk_json", "delete"]), st.data())
def test_datasets_dir_rows_or_one_error(case, damage, data):
    """A ``save_to_disk`` folder, intact or with one file damaged: rows, or one error naming the folder."""
    import datasets

    records, expect = case
    with scratch() as folder:
        path = folder / "ds"
        datasets.DatasetDict({"train": datasets.Dataset(_table(records))}).save_to_disk(str(path))
        if damage != "save":
            files = sorted(p for p in path.rglob("*") if p.is_file())
            victim = data.draw(st.sampled_from(files))
            raw = victim.read_bytes()
            if damage == "truncate":
                victim.write_bytes(raw[:data.draw(st.integers(0, max(len(raw) - 1, 0)))])
            elif damage == "flip" and raw:
                at = data.draw(st.integers(0, len(raw) - 1))
                victim.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
            elif damage == "junk_json":
                victim.write_bytes(data.draw(arbitrary_bytes))
            else:
                victim.unlink()
            _rows_or_error(str(path))
        else:
            check_load(str(path), [str(path)], expect)


def _parquet_bytes(records) -> bytes:
    import io

    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(_table(records), buffer)
    return buffer.getvalue()


def _damaged(raw: bytes):
    """A parquet file cut short, or with one byte flipped."""
    cut = st.integers(0, len(raw) - 1).map(lambda at: raw[:at])
    flip = st.integers(0, len(raw) - 1).map(lambda at: raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    return cut | flip


@given(arbitrary_bytes | rows().map(lambda case: _parquet_bytes(case[0])).flatmap(_damaged))
def test_parquet_damaged_or_foreign_bytes(data):
    with scratch() as folder:
        path = folder / "chat.parquet"
        path.write_bytes(data)
        _rows_or_error(str(path))


def _rows_or_error(source: str) -> None:
    from fatune.data import LoadStats, load_conversations
    from fatune.errors import FatuneError

    for skip in (False, True):
        try:
            for conversation in load_conversations(source, skip_invalid=skip, stats=LoadStats()):
                check_valid(conversation.messages, "train")
        except FatuneError as error:
            check_error(error, [source])
