"""prepare: dedupe, deterministic subset and split, and a cache that is fast and never stale."""

import json

import pytest
from conftest import CONVERSATION, MULTI_TURN, write_jsonl

from fatune.config import load_config
from fatune.data import Conversation
from fatune.data.prepare import dedupe, prepare, split, take_fraction


def conv(text):
    return Conversation([{"role": "user", "content": text}, {"role": "assistant", "content": "بله"}])


def test_dedupe_keeps_first_and_counts():
    items = [conv("الف"), conv("ب"), conv("الف"), conv("ج"), conv("ب")]
    kept, dropped = dedupe(items)
    assert [c.messages[0]["content"] for c in kept] == ["الف", "ب", "ج"] and dropped == 2


@pytest.mark.parametrize("n, ratio, n_val", [(100, 0.1, 10), (10, 0.1, 1), (5, 0.1, 1), (1, 0.1, 0), (20, 0, 0)])
def test_split_sizes(n, ratio, n_val):
    train, val = split(list(range(n)), ratio, 42)
    assert len(val) == n_val and sorted(train + val) == list(range(n))


def test_split_and_fraction_are_deterministic_and_seeded():
    items = list(range(1000))
    assert split(items, 0.1, 42) == split(items, 0.1, 42)
    assert split(items, 0.1, 42)[1] != split(items, 0.1, 7)[1]
    subset = take_fraction(items, 0.2, 42)
    assert len(subset) == 200 and subset == sorted(subset) and subset == take_fraction(items, 0.2, 42)
    assert take_fraction(items, 1.0, 42) == items


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FATUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _config(path, *overrides):
    return load_config(None, [f"data.path={path}", "data.max_length=256", *overrides])


def test_prepare_report_and_rows(tmp_path, cache, tiny_tok):
    records = [CONVERSATION, MULTI_TURN, CONVERSATION] + [
        {"messages": [{"role": "user", "content": f"سؤال {i}"}, {"role": "assistant", "content": f"پاسخ {i}"}]}
        for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    prepared = prepare(_config(path), tiny_tok)
    report = prepared.report
    assert report["loaded"] == 23 and report["duplicates"] == 1 and report["after_fraction"] == 22
    assert report["train"]["conversations"] + report["val"]["conversations"] == 22
    assert report["val"]["conversations"] == 2  # 10% of 22, rounded
    assert len(prepared.train) == report["train"]["rows"] < report["train"]["conversations"]  # packed
    row = prepared.train[0]
    assert set(row) == {"input_ids", "labels", "position_ids", "seq_lengths"}
    assert sum(row["seq_lengths"]) == len(row["input_ids"]) <= 256


def test_long_conversations_are_truncated_or_dropped_and_counted(tmp_path, cache, tiny_tok):
    long_answer = {"messages": [{"role": "user", "content": "سلام"}, {"role": "assistant", "content": "خیلی " * 300}]}
    long_prompt = {"messages": [{"role": "user", "content": "سلام " * 300}, {"role": "assistant", "content": "بله"}]}
    path = write_jsonl(tmp_path / "long.jsonl", [long_answer, long_prompt, CONVERSATION])
    report = prepare(_config(path, "data.val_ratio=0"), tiny_tok).report["train"]
    assert report["truncated"] == 2 and report["dropped_no_trained_token"] == 1 and report["conversations"] == 2


def test_second_run_uses_the_cache_and_an_edit_invalidates_it(tmp_path, cache, tiny_tok, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", [CONVERSATION, MULTI_TURN])
    first = prepare(_config(path), tiny_tok)
    import fatune.data.prepare as prepare_module

    def no_render(*args, **kwargs):
        raise AssertionError("rendered again although the cache was valid")

    monkeypatch.setattr(prepare_module, "render_batch", no_render)
    second = prepare(_config(path), tiny_tok)
    assert second.path == first.path and second.report == first.report
    assert second.train["input_ids"] == first.train["input_ids"]

    monkeypatch.undo()
    monkeypatch.setenv("FATUNE_CACHE", str(cache))
    write_jsonl(path, [CONVERSATION, MULTI_TURN, {"messages": MULTI_TURN["messages"][:2]}])  # the user edits the file
    edited = prepare(_config(path), tiny_tok)
    assert edited.path != first.path and edited.report["loaded"] == 3
    assert prepare(_config(path, "data.max_length=128"), tiny_tok).path != edited.path  # settings are in the key
    assert prepare(_config(path, "model.template=chatml"), tiny_tok).path != edited.path  # and the template


def test_prepare_without_cache_writes_nothing(tmp_path, cache, tiny_tok):
    path = write_jsonl(tmp_path / "d.jsonl", [CONVERSATION, MULTI_TURN])
    prepare(_config(path, "data.cache=false"), tiny_tok)
    assert not (cache / "prepared").exists()


def test_bad_record_stops_prepare_with_its_location(tmp_path, cache, tiny_tok):
    from fatune.errors import DataError

    path = write_jsonl(tmp_path / "d.jsonl", [CONVERSATION, {"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: a training conversation needs"):
        prepare(_config(path), tiny_tok)
    report = prepare(_config(path, "data.skip_invalid=true"), tiny_tok).report
    assert report["skipped"] == {"no_assistant": 1} and json.dumps(report)
