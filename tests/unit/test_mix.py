"""Training mixes (data.sources): resizing, article-level splits, config errors and the cache key."""

import json

import numpy as np
import pytest
from conftest import write_jsonl

from fatune.config import load_config
from fatune.data import Conversation
from fatune.data.prepare import cache_key, prepare, resize, source_fingerprint, split
from fatune.errors import FatuneError


def conv(text, group=None):
    return Conversation([{"role": "user", "content": text}, {"role": "assistant", "content": "بله"}], group=group)


def test_count_is_a_seeded_ordered_sample_and_too_many_is_an_error():
    items = list(range(100))
    chosen = resize(items, count=10, seed=[42, 0])
    assert len(chosen) == 10 and chosen == sorted(chosen) and chosen == resize(items, count=10, seed=[42, 0])
    assert chosen != resize(items, count=10, seed=[42, 1])
    assert resize(items, count=100, seed=1) == items
    with pytest.raises(FatuneError, match=r"data\.sources \(qa\.json\): count is 101 but the source has only 100"):
        resize(items, count=101, seed=1, name="qa.json")


def test_weight_downsamples_and_upsamples_deterministically():
    items = list(range(10))
    assert resize(items) == items and resize(items, weight=1.0) == items
    half = resize(items, weight=0.5, seed=3)
    assert len(half) == 5 and set(half) < set(items) and half == resize(items, weight=0.5, seed=3)
    upsampled = resize(items, weight=2.5, seed=3)
    assert upsampled[:20] == items + items and upsampled[20:] == half  # two copies, then a seeded half
    assert resize(items, weight=3.0, seed=3) == items * 3


def test_grouped_split_keeps_each_article_on_one_side():
    items = [conv(f"پرسش {a}-{q}", group=f"qa.json#{a}") for a in range(20) for q in range(a % 4 + 1)]
    train, val = split(items, 0.2, 42)
    train_groups, val_groups = {c.group for c in train}, {c.group for c in val}
    assert not train_groups & val_groups and len(val_groups) == 4 and len(train) + len(val) == len(items)
    assert split(items, 0.2, 42) == (train, val)
    assert {c.group for c in split(items, 0.2, 7)[1]} != val_groups


def test_ungrouped_split_is_unchanged():
    items = [conv(f"پرسش {i}") for i in range(37)]
    order = np.random.default_rng(5).permutation(37)[:4]  # the split as it always was: n_val = round(0.1 * 37)
    assert split(items, 0.1, 5)[1] == [items[i] for i in sorted(order.tolist())]


def test_config_errors():
    with pytest.raises(FatuneError, match="data.path and data.sources are both given"):
        load_config(None, ["data.path=a.jsonl", "data.sources=[{path: b.jsonl}]"])
    with pytest.raises(FatuneError, match=r"data\.sources\.0: give count or weight, not both"):
        load_config(None, ["data.sources=[{path: b.jsonl, count: 3, weight: 2}]"])
    config = load_config(None, ["data.sources=[{path: b.jsonl, count: 3}, {path: c.tsv, weight: 1.5}]"])
    assert [(s.path, s.count, s.weight) for s in config.data.sources] == [("b.jsonl", 3, None), ("c.tsv", None, 1.5)]


def _records(prefix, n):
    return [{"messages": [{"role": "user", "content": f"{prefix} {i}"}, {"role": "assistant", "content": "بله"}]}
            for i in range(n)]


def _squad(path, articles, questions):
    context = "تهران پایتخت ایران است."
    data = [{"title": str(a), "paragraphs": [{"context": context, "qas": [
        {"question": f"پرسش {a}-{q}؟", "id": f"{a}-{q}", "answers": [{"text": "تهران", "answer_start": 0}],
         "is_impossible": False} for q in range(questions)]}]} for a in range(articles)]
    path.write_text(json.dumps({"version": "1", "data": data}, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FATUNE_CACHE", str(tmp_path / "cache"))


def _mix(*sources, overrides=()):
    listed = ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in s.items()) + "}" for s in sources)
    return load_config(None, [f"data.sources=[{listed}]", "data.max_length=256", *overrides])


def test_prepare_mix_reports_each_source(tmp_path, cache, tiny_tok):
    chat = write_jsonl(tmp_path / "chat.jsonl", _records("سؤال", 30))
    qa = _squad(tmp_path / "qa.json", articles=12, questions=3)
    config = _mix({"path": chat, "count": 10}, {"path": f"{qa}#0:10", "weight": 2})
    report = prepare(config, tiny_tok).report
    assert [(s["path"], s["loaded"], s["train"], s["val"]) for s in report["sources"]] == [
        (str(chat), 30, 10, 3), (f"{qa}#0:10", 30, 54, 3)]  # 9 articles train (x2), 1 article (3 questions) val
    assert report["train"]["conversations"] == 64 and report["val"]["conversations"] == 6
    assert report["loaded"] == 60 and report["source"] == [str(chat), f"{qa}#0:10"]

    with pytest.raises(FatuneError, match=r"count is 40 but the source has only 27"):
        prepare(_mix({"path": chat, "count": 40}), tiny_tok)


def test_questions_per_chat_counts_chats_and_keeps_the_article_split(tmp_path, cache, tiny_tok):
    qa = _squad(tmp_path / "qa.json", articles=10, questions=3)
    config = _mix({"path": qa, "questions_per_chat": 2, "weight": 2})
    report = prepare(config, tiny_tok).report
    # 3 questions per paragraph -> chats of 2 and 1: 20 chats; 9 articles (18 chats) train, twice; 1 val.
    assert [(s["loaded"], s["train"], s["val"]) for s in report["sources"]] == [(20, 36, 2)]
    assert cache_key(config, tiny_tok) != cache_key(_mix({"path": qa, "weight": 2}), tiny_tok)
    with pytest.raises(FatuneError, match=r"questions_per_chat.*greater than or equal to 1"):
        _mix({"path": qa, "questions_per_chat": 0})


def test_mix_is_deterministic_and_shuffled(tmp_path, cache, tiny_tok):
    a = write_jsonl(tmp_path / "a.jsonl", _records("الف", 20))
    b = write_jsonl(tmp_path / "b.jsonl", _records("دال", 20))
    config = _mix({"path": a}, {"path": b}, overrides=["data.cache=false", "data.packing=false"])
    first, second = prepare(config, tiny_tok), prepare(config, tiny_tok)
    assert first.train["input_ids"] == second.train["input_ids"]
    tokens = [tiny_tok.decode(row) for row in first.train["input_ids"]]
    assert len(tokens) == 36 and any("دال" in t for t in tokens[:18])  # interleaved, not all of a.jsonl first
    assert [t for t in tokens if "الف" in t] == [t for t in tokens if "دال" not in t]


def test_cache_key_includes_every_source_and_the_selector(tmp_path, tiny_tok):
    qa = _squad(tmp_path / "qa.json", articles=4, questions=1)
    chat = write_jsonl(tmp_path / "chat.jsonl", _records("سؤال", 3))
    assert source_fingerprint(f"{qa}#0:2") != source_fingerprint(f"{qa}#0:3") != source_fingerprint(str(qa))
    keys = {cache_key(_mix({"path": f"{qa}#0:2"}), tiny_tok), cache_key(_mix({"path": f"{qa}#0:3"}), tiny_tok),
            cache_key(_mix({"path": f"{qa}#0:2"}, {"path": chat}), tiny_tok)}
    assert len(keys) == 3
    before = cache_key(_mix({"path": f"{qa}#0:2"}, {"path": chat}), tiny_tok)
    write_jsonl(chat, _records("سؤال", 4))  # editing the second source changes the key
    assert cache_key(_mix({"path": f"{qa}#0:2"}, {"path": chat}), tiny_tok) != before
    (tmp_path / "en.txt").write_text("Hi.\n", encoding="utf-8")
    (tmp_path / "fa.txt").write_text("سلام.\n", encoding="utf-8")
    pair = f"{tmp_path / 'en.txt'}+{tmp_path / 'fa.txt'}"
    before = source_fingerprint(pair)
    (tmp_path / "fa.txt").write_text("درود.\n", encoding="utf-8")
    assert source_fingerprint(pair) != before
