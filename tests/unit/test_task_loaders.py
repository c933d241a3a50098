"""Task-data loaders (SQuAD, SIB-200, translation pairs), the #START:END selector and the bundled subsets."""

import json

import pytest
from conftest import FARSTAIL_TEST, run_cli, shared_path, write_jsonl

from fatune.data import LoadStats, load_conversations
from fatune.data.sib200 import LABELS_FA, read_sib200
from fatune.data.records import local_path, tasks_dir
from fatune.data.sources import parse_source
from fatune.data.squad import NO_ANSWER, read_squad
from fatune.data.translation import read_pairs
from fatune.errors import DataError, FatuneError

QA_HEAD = ("متن زیر را بخوانید و با عبارتی کوتاه از خود متن به پرسش پاسخ دهید. "
           "اگر پاسخ در متن نیست، بنویسید: «پاسخ این پرسش در متن نیامده است.»")
CONTEXT = "تهران پایتخت ایران است و در شمال کشور قرار دارد."


def _qa(question, answer=None, start=None, qid="q"):
    if answer is None:
        return {"question": question, "id": qid, "answers": [], "is_impossible": True}
    start = CONTEXT.index(answer) if start is None else start
    return {"question": question, "id": qid, "answers": [{"text": answer, "answer_start": start}],
            "is_impossible": False}


def _squad(path, articles):
    """``articles``: a list of lists of qas, one paragraph (with ``CONTEXT``) per article."""
    data = [{"title": f"مقاله {i}", "paragraphs": [{"context": CONTEXT, "qas": qas}]} for i, qas in enumerate(articles)]
    path.write_text(json.dumps({"version": "1", "data": data}, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def _messages(source, **kwargs):
    return [c.messages for c in load_conversations(source, normalize=False, **kwargs)]


def test_squad_conversations_and_no_answer(tmp_path):
    path = _squad(tmp_path / "qa.json", [[_qa("پایتخت ایران کجاست؟", "تهران"), _qa("جمعیت تهران چقدر است؟")]])
    answerable, impossible = _messages(path)
    assert answerable == [
        {"role": "user", "content": f"{QA_HEAD}\n\nمتن: {CONTEXT}\n\nپرسش: پایتخت ایران کجاست؟"},
        {"role": "assistant", "content": "تهران"}]
    assert impossible[1]["content"] == NO_ANSWER == "پاسخ این پرسش در متن نیامده است."
    items = list(read_squad(path))
    assert [(i.id, i.article, i.title, i.answers, i.impossible, i.location) for i in items] == [
        ("q", 0, "مقاله 0", ["تهران"], False, "data[0].paragraphs[0].qas[0]"),
        ("q", 0, "مقاله 0", [], True, "data[0].paragraphs[0].qas[1]")]
    loaded = list(load_conversations(path))
    assert [(c.line, c.group) for c in loaded] == [("data[0].paragraphs[0].qas[0]", f"{path}#0"),
                                                   ("data[0].paragraphs[0].qas[1]", f"{path}#0")]


def test_squad_questions_per_chat_groups_one_paragraph_in_file_order(tmp_path):
    # Article 0 has one paragraph of five questions, article 1 one of two: with 2 per chat the chunks
    # are (q0, q1), (q2, q3), (q4) and, never crossing a paragraph, (r0, r1).
    five = [_qa(f"پرسش {i}؟", "تهران", qid=f"q{i}") if i != 3 else _qa("پرسش 3؟", qid="q3") for i in range(5)]
    two = [_qa("پایتخت کجاست؟", "تهران", qid="r0"), _qa("کشور کجاست؟", "ایران", qid="r1")]
    path = _squad(tmp_path / "qa.json", [five, two])
    chats = list(load_conversations(path, normalize=False, questions_per_chat=2))
    assert [(c.line, c.group) for c in chats] == [
        ("data[0].paragraphs[0].qas[0]", f"{path}#0"), ("data[0].paragraphs[0].qas[2]", f"{path}#0"),
        ("data[0].paragraphs[0].qas[4]", f"{path}#0"), ("data[1].paragraphs[0].qas[0]", f"{path}#1")]
    assert chats[1].messages == [
        {"role": "user", "content": f"{QA_HEAD}\n\nمتن: {CONTEXT}\n\nپرسش: پرسش 2؟"},
        {"role": "assistant", "content": "تهران"},
        {"role": "user", "content": "پرسش: پرسش 3؟"},
        {"role": "assistant", "content": NO_ANSWER}]
    # The first turn of every chat is exactly the single-question conversation (what evaluation asks).
    singles = _messages(path)
    assert [c.messages[:2] for c in chats] == [singles[0], singles[2], singles[4], singles[5]]
    assert chats[3].messages[2:] == [{"role": "user", "content": "پرسش: کشور کجاست؟"},
                                     {"role": "assistant", "content": "ایران"}]
    # One per chat is the default; a chat as large as the paragraph takes all of it.
    assert _messages(path, questions_per_chat=1) == singles
    assert [len(c.messages) // 2 for c in load_conversations(path, questions_per_chat=10)] == [5, 2]


def test_questions_per_chat_is_refused_for_other_sources(tmp_path):
    tsv = tmp_path / "sib.tsv"
    tsv.write_text("index_id\tcategory\ttext\n1\tscience/technology\tمتن\n", encoding="utf-8")
    with pytest.raises(FatuneError, match="questions_per_chat=3 applies to SQuAD JSON files only"):
        list(load_conversations(tsv, questions_per_chat=3))


def test_squad_span_mismatch_names_file_and_json_path(tmp_path):
    good = _qa("پایتخت؟", "تهران")
    path = _squad(tmp_path / "qa.json", [[good], [good, _qa("کجا؟", "شمال", start=3)]])
    with pytest.raises(DataError) as error:
        _messages(path)
    assert str(error.value) == (f"{path}: data[1].paragraphs[0].qas[1]: answer text does not match the context "
                                "at answer_start (answers[0].answer_start)")
    stats = LoadStats()
    assert len(_messages(path, skip_invalid=True, stats=stats)) == 2
    assert stats.skipped == {"span_mismatch": 1}


def test_squad_missing_context_and_invalid_json(tmp_path):
    path = _squad(tmp_path / "qa.json", [[_qa("پایتخت؟", "تهران")], [_qa("کجا؟", "شمال")]])
    document = json.loads(path.read_text(encoding="utf-8"))
    del document["data"][1]["paragraphs"][0]["context"]
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match=r"qa\.json: data\[1\]\.paragraphs\[0\]: the context is missing"):
        _messages(path)
    stats = LoadStats()
    assert len(_messages(path, skip_invalid=True, stats=stats)) == 1 and stats.skipped == {"empty_context": 1}

    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "1",\n "data": [\n  {"title": "x",,}]}', encoding="utf-8")
    with pytest.raises(DataError) as error:
        _messages(broken)
    assert error.value.line == 3 and error.value.reason == "invalid_json"
    assert str(error.value).startswith(f"{broken}:3: not valid JSON")


def test_squad_selector_picks_articles(tmp_path):
    path = _squad(tmp_path / "qa.json", [[_qa(f"پرسش {i}؟", "تهران"), _qa(f"دوم {i}؟")] for i in range(5)])
    selected = list(load_conversations(f"{path}#1:3"))
    assert {c.group for c in selected} == {f"{path}#1", f"{path}#2"} and len(selected) == 4
    assert [i.article for i in read_squad(path, articles=slice(3, None))] == [3, 3, 4, 4]
    with pytest.raises(FatuneError, match=r"starts at article 9 \(0-based\) but the source has only 5 articles"):
        _messages(f"{path}#9:")


def _sib(path, rows):
    path.write_text("index_id\tcategory\ttext\n" + "".join(f"{i}\t{c}\t{t}\n" for i, (c, t) in enumerate(rows)),
                    encoding="utf-8")
    return path


def test_sib200_conversation_and_unknown_label(tmp_path):
    path = _sib(tmp_path / "sib.tsv", [("sports", "تیم ملی برد."), ("weather", "باران آمد."),
                                       ("travel", "به شیراز رفتیم.")])
    with pytest.raises(DataError) as error:
        _messages(path)
    assert (error.value.line, error.value.field) == (3, "category")
    assert str(error.value).startswith(f"{path}:3: unknown SIB-200 label 'weather'; expected one of science/technology")
    stats = LoadStats()
    first, last = _messages(path, skip_invalid=True, stats=stats)
    assert stats.skipped == {"bad_label": 1}
    assert first == [{"role": "user", "content": "موضوع این جمله کدام است؟ علم و فناوری، سفر، سیاست، ورزش، سلامت، "
                                                 "سرگرمی یا جغرافیا\n\nتیم ملی برد."},
                     {"role": "assistant", "content": "ورزش"}]
    assert last[1]["content"] == LABELS_FA["travel"] == "سفر"
    assert list(read_sib200(path, rows=slice(2, 3))) == [(4, "به شیراز رفتیم.", "travel")]


def _pair(tmp_path, english, persian):
    (tmp_path / "en.txt").write_text("".join(line + "\n" for line in english), encoding="utf-8")
    (tmp_path / "fa.txt").write_text("".join(line + "\n" for line in persian), encoding="utf-8")
    return f"{tmp_path / 'en.txt'}+{tmp_path / 'fa.txt'}"


def test_translation_pairs_and_selector(tmp_path):
    spec = _pair(tmp_path, ["Hello.", "Good night.", "Thanks."], ["سلام.", "شب بخیر.", "ممنون."])
    assert _messages(spec)[0] == [{"role": "user", "content": "این متن انگلیسی را به فارسی ترجمه کنید:\n\nHello."},
                                  {"role": "assistant", "content": "سلام."}]
    assert [c.line for c in load_conversations(f"{spec}#1:")] == [2, 3]
    assert list(read_pairs(tmp_path / "en.txt", tmp_path / "fa.txt", slice(0, 1))) == [(1, "Hello.", "سلام.")]
    assert parse_source(f"{spec}#1:") == (spec, slice(1, None))


def test_translation_unequal_files_and_empty_line(tmp_path):
    spec = _pair(tmp_path, ["Hello.", "Good night.", "Thanks."], ["سلام.", "شب بخیر."])
    with pytest.raises(DataError) as error:
        _messages(spec)
    assert str(error.value).startswith(f"{tmp_path / 'en.txt'}:3: {tmp_path / 'en.txt'} has 3 lines but "
                                       f"{tmp_path / 'fa.txt'} has 2")
    stats = LoadStats()
    assert len(_messages(spec, skip_invalid=True, stats=stats)) == 2 and stats.skipped == {"unaligned": 1}

    spec = _pair(tmp_path, ["Hello.", "Good night."], ["سلام.", " "])
    with pytest.raises(DataError, match=r"fa\.txt:2: empty line"):
        _messages(spec)
    stats = LoadStats()
    assert len(_messages(spec, skip_invalid=True, stats=stats)) == 1 and stats.skipped == {"empty_line": 1}


def test_selector_on_jsonl_and_tsv_rows(tmp_path):
    records = [{"messages": [{"role": "user", "content": f"سؤال {i}"}, {"role": "assistant", "content": "بله"}]}
               for i in range(6)]
    path = write_jsonl(tmp_path / "d.jsonl", records[:2] + ["not json"] + records[2:])
    # Selection counts every record, bad ones too, so skipping never shifts it.
    assert [c.line for c in load_conversations(f"{path}#1:4", skip_invalid=True)] == [2, 4]
    farstail = tmp_path / "ft.tsv"
    farstail.write_text("premise\thypothesis\tlabel\n" + "".join(f"متن {i}\tجمله\te\n" for i in range(4)),
                        encoding="utf-8")
    assert [c.line for c in load_conversations(f"{farstail}#:2")] == [2, 3]
    assert parse_source("a.jsonl#x") == ("a.jsonl#x", None)  # not a selector: part of the path
    with pytest.raises(FatuneError, match=r"^b\.jsonl#3:3: the selector #3:3 selects nothing"):
        parse_source("b.jsonl#3:3")


def test_tasks_alias_and_bundled_files_load():
    assert local_path("fatune:tasks/pquad/heldout.json") == tasks_dir() / "pquad" / "heldout.json"
    counts = {}
    for source in ("pquad/train.json", "pquad/heldout.json", "sib200/train.tsv", "sib200/test.tsv",
                   "farstail/train.tsv", "farstail/test.tsv"):
        counts[source] = sum(1 for _ in load_conversations(f"fatune:tasks/{source}"))
    counts["ntrex"] = sum(1 for _ in load_conversations("fatune:tasks/ntrex/eng-US.txt+fatune:tasks/ntrex/fas.txt"))
    assert counts == {"pquad/train.json": 1879, "pquad/heldout.json": 1493, "sib200/train.tsv": 701,
                      "sib200/test.tsv": 204, "farstail/train.tsv": 2000, "farstail/test.tsv": 1564, "ntrex": 1000}
    train = {c.group.split("#")[1] for c in load_conversations("fatune:tasks/pquad/train.json")}
    assert train == {str(i) for i in range(30)}
    for folder, license_file in (("pquad", "LICENSE.md"), ("sib200", "LICENSE"), ("farstail", "LICENSE"),
                                 ("ntrex", "LICENSE.md")):
        assert (tasks_dir() / folder / license_file).is_file()
    assert "CC BY-SA 4.0" in (tasks_dir() / "README.md").read_text(encoding="utf-8")
    with pytest.raises(FatuneError, match="no such bundled task file; bundled: .*pquad/heldout.json"):
        _messages("fatune:tasks/pquad/nope.json")


def test_full_pquad_validation_is_clean_and_the_heldout_subset_matches_it():
    validation = shared_path("data/pquad/validation.json")
    full = list(load_conversations(validation))
    assert len(full) == 7976 and sum(c.messages[-1]["content"] == NO_ANSWER for c in full) == 1981
    heldout = [c.messages for c in load_conversations(f"{validation}#100:120")]
    assert heldout == [c.messages for c in load_conversations("fatune:tasks/pquad/heldout.json")]
    assert len({c.group for c in full}) == 120


def test_bundled_farstail_test_split_is_the_full_one():
    # Tests use the bundled copy (conftest.FARSTAIL_TEST) in place of ../shared/data/farstail/test.tsv.
    assert FARSTAIL_TEST.read_bytes() == shared_path("data/farstail/test.tsv").read_bytes()


def test_cli_inspects_task_data_and_fails_in_one_line(tmp_path):
    result = run_cli("data", "inspect", "fatune:tasks/pquad/heldout.json#0:2", "-n", "1")
    assert result.returncode == 0 and "conversations: 123" in result.stdout and "پرسش:" in result.stdout
    assert "articles (kept on one side of a train/val split): 2" in result.stdout
    bad = _squad(tmp_path / "qa.json", [[_qa("کجا؟", "شمال", start=0)]])
    result = run_cli("data", "inspect", bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"fatune: error: {bad}: data[0].paragraphs[0].qas[0]: answer text does not "
                                     "match the context at answer_start (answers[0].answer_start)")
