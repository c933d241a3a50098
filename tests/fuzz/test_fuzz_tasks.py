"""Fuzz the task-data loaders: FarsTail and SIB-200 TSVs, SQuAD 2.0 JSON, and ``SRC+TGT`` translation pairs."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fatune.data.farstail import SYSTEM_PROMPT, nli_conversation
from fatune.data.sib200 import LABELS_FA, topic_conversation
from fatune.data.squad import NO_ANSWER, QA_INSTRUCTION
from fatune.data.translation import translation_conversation

from .strategies import arbitrary_bytes, blank, check_load, content, scratch

pytestmark = pytest.mark.fuzz

NEWLINES = re.compile(r"\r\n|\r|\n")  # what csv (reading with newline="") counts as a line break
BOM = "\ufeff"


def _field(value: str) -> str:
    """A TSV field as csv writes one: quoted (quotes doubled) when it holds a tab, a line break or a quote."""
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if re.search(r'[\t\r\n"]', value) else value


@st.composite
def tsv_file(draw, kind: str):
    """A FarsTail or SIB-200 TSV with mutated rows: ``(text, {line: (kind, messages)})``."""
    if kind == "farstail":
        columns = ["premise", "hypothesis", "label"] + draw(st.sampled_from([[], ["hard(hypothesis)", "hard(overlap)"]]))
    else:
        columns = ["index_id", "category", "text"]
    columns = draw(st.permutations(columns))  # columns are found by name, in any order
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = draw(st.sampled_from(["", BOM])) + "\t".join(columns) + newline
    expect = {}
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 5)) == 0:
            filler = draw(st.sampled_from(["", "\t\t"]))  # a blank line is no record; a row of empty columns is
            if filler:
                expect[len(NEWLINES.findall(text)) + 1] = ("invalid", None)
            text += filler + newline
            continue
        if kind == "farstail":
            values = {"premise": draw(content), "hypothesis": draw(content),
                      "label": draw(st.sampled_from(["e", "n", "c"])) + draw(st.sampled_from(["", " ", "  "])),
                      "hard(hypothesis)": "0", "hard(overlap)": "1"}
        else:
            values = {"index_id": str(draw(st.integers(0, 2000))), "text": draw(content),
                      "category": draw(st.sampled_from(sorted(LABELS_FA))) + draw(st.sampled_from(["", " "]))}
        row_kind, naive = "valid", None
        mutation = draw(st.sampled_from([None, None, "blank", "label", "fewer", "extra_empty", "extra_text",
                                         "naive_tab"]))
        if mutation == "blank":
            values[draw(st.sampled_from(["premise", "hypothesis"] if kind == "farstail" else ["text"]))] = draw(blank)
            row_kind = "invalid"
        elif mutation == "label":
            key = "label" if kind == "farstail" else "category"
            values[key] = draw(st.sampled_from(["E", "entailment", "", "0", "x", "sport", "SPORTS", "ورزش"]))
            row_kind = "invalid"
        elif mutation == "naive_tab":  # a tab written into a field without quoting: the row gets a column too many
            naive = draw(st.sampled_from(["premise", "hypothesis"] if kind == "farstail" else ["text"]))
            row_kind = "maybe"
        fields = [_field(values[c]) if c != naive else values[c].replace("\n", " ").replace("\r", " ")
                  .replace('"', "'") + "\t" + "بعد" for c in columns]
        if naive:
            values[naive] = fields[columns.index(naive)]  # what the writer meant
        if mutation == "fewer":
            fields = fields[:draw(st.integers(0, len(fields) - 1))]
            row_kind = "invalid"
        elif mutation == "extra_empty":
            fields.append("")  # a trailing tab
        elif mutation == "extra_text":
            fields.append(_field(draw(content)))
            row_kind = "invalid"
        start = len(NEWLINES.findall(text)) + 1
        text += "\t".join(fields) + newline
        if not "\t".join(fields):
            continue  # nothing but the line break (every field dropped or empty): a blank line
        if kind == "farstail":
            messages = nli_conversation(values["premise"], values["hypothesis"], values["label"].strip(),
                                        SYSTEM_PROMPT)["messages"] if row_kind != "invalid" else None
        else:
            messages = topic_conversation(values["text"], values["category"].strip())["messages"] \
                if row_kind != "invalid" else None
        expect[start] = (row_kind, messages)
    if text.endswith(newline) and draw(st.booleans()):
        text = text[:-len(newline)]
    return text, expect


@given(st.sampled_from(["farstail", "sib200"]).flatmap(lambda kind: st.tuples(st.just(kind), tsv_file(kind))))
def test_task_tsv_rows_are_kept_or_reported(case):
    kind, (text, expect) = case
    with scratch() as folder:
        path = folder / f"{kind}.tsv"
        path.write_bytes(text.encode("utf-8"))
        check_load(str(path), [str(path)], expect)


@given(arbitrary_bytes, st.sampled_from([b"premise\thypothesis\tlabel\n", b"index_id\tcategory\ttext\n", b""]))
def test_task_tsv_arbitrary_bytes(data, header):
    """Any bytes after a valid header (or none): records or a one-line error; nothing else."""
    with scratch() as folder:
        path = folder / "task.tsv"
        path.write_bytes(header + data)
        _no_traceback(str(path), [str(path)])


def _no_traceback(source: str, names: list[str]) -> None:
    """Records that pass ``check_valid``, or a one-line ``FILE:LINE`` error; no other exception."""
    from fatune.data import LoadStats, load_conversations
    from fatune.errors import FatuneError

    from .strategies import check_error, check_valid

    for skip in (False, True):
        try:
            for conversation in load_conversations(source, skip_invalid=skip, stats=LoadStats()):
                check_valid(conversation.messages, "train")
        except FatuneError as error:
            check_error(error, names)


@st.composite
def squad_file(draw):
    """A SQuAD 2.0 document with mutated articles, paragraphs and questions: ``(document, expect, locations)``."""
    expect, locations = {}, set()
    ascii_only = False
    data = []
    for a in range(draw(st.integers(0, 3))):
        where = f"data[{a}]"
        locations.add(where)
        article_mutation = draw(st.sampled_from([None, None, None, "not_object", "no_paragraphs", "title"]))
        if article_mutation == "not_object":
            data.append(draw(st.sampled_from([None, 3, "article", []])))
            expect[where] = ("invalid", None)
            continue
        if article_mutation == "no_paragraphs":
            data.append({"title": "t", "paragraphs": draw(st.sampled_from([None, {}, "p", 1]))})
            expect[where] = ("invalid", None)
            continue
        paragraphs = []
        for p in range(draw(st.integers(0, 2))):
            pwhere = f"{where}.paragraphs[{p}]"
            locations.add(pwhere)
            answer_text = draw(content)
            before, after = draw(content), draw(content)
            context = before + answer_text + after
            questions, qwheres, kinds = [], [], []
            for q in range(draw(st.integers(0, 3))):
                qwhere = f"{pwhere}.qas[{q}]"
                question = draw(content)
                impossible = draw(st.booleans())
                qa = {"id": f"q{q}", "question": question, "is_impossible": impossible,
                      "answers": [] if impossible else [{"text": answer_text, "answer_start": len(before)}]}
                kind = "valid"
                mutation = draw(st.sampled_from([None, None, "not_object", "question", "impossible_type",
                                                 "answers_type", "contradiction", "answer", "start", "mismatch",
                                                 "extra"]))
                if mutation == "not_object":
                    qa, kind = draw(st.sampled_from([None, "q", 7, [qa]])), "invalid"
                elif mutation == "question":
                    qa["question"] = draw(st.sampled_from([None, 5, [], ""]) | blank)
                    kind = "invalid"
                elif mutation == "impossible_type":
                    qa["is_impossible"] = draw(st.sampled_from(["true", 1, 0, None, "false"]))
                    kind = "invalid"
                elif mutation == "answers_type":
                    qa["answers"] = draw(st.sampled_from([None, "a", {"text": "a"}, 3]))
                    kind = "invalid"
                elif mutation == "contradiction":  # unanswerable with answers, or answerable without
                    qa["is_impossible"] = not impossible
                    kind = "invalid"
                elif mutation == "answer" and not impossible:
                    qa["answers"][0] = draw(st.sampled_from([None, "text", {"text": answer_text},
                                                             {"text": "", "answer_start": 0},
                                                             {"text": 5, "answer_start": 0}]))
                    kind = "invalid"
                elif mutation == "start" and not impossible:
                    qa["answers"][0]["answer_start"] = draw(st.sampled_from([-1, True, 1.5, "0", None,
                                                                             str(len(before))]))
                    kind = "invalid"
                elif mutation == "mismatch" and not impossible:
                    shift = draw(st.integers(1, 5))
                    shifted = len(before) + shift
                    qa["answers"][0]["answer_start"] = shifted
                    if context[shifted:shifted + len(answer_text)] != answer_text:
                        kind = "invalid"
                elif mutation == "extra":
                    qa["plausible_answers"] = [{"text": "x", "answer_start": 0}]
                messages = None
                if kind == "valid":
                    user = f"{QA_INSTRUCTION}\n\nمتن: {context.strip()}\n\nپرسش: {question.strip()}"
                    answer = NO_ANSWER if impossible else answer_text.strip()
                    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
                questions.append(qa)
                qwheres.append(qwhere)
                kinds.append((kind, messages))
            paragraph = {"context": context, "qas": questions}
            mutation = draw(st.sampled_from([None, None, None, "context", "surrogate", "qas", "not_object"]))
            if mutation == "context":
                paragraph["context"] = draw(st.sampled_from([None, 3, ""]) | blank)
            elif mutation == "surrogate":  # "\udc00" escaped in the JSON text: parsed, but no character
                paragraph["context"] = context + "\udc00"
                ascii_only = True
            elif mutation == "qas":
                paragraph["qas"] = draw(st.sampled_from([None, {}, "q"]))
            elif mutation == "not_object":
                paragraph = draw(st.sampled_from([None, [], "p"]))
            paragraphs.append(paragraph)
            if mutation == "context" and questions:  # each question of the paragraph is lost, and counted
                expect.update((qwhere, ("invalid", None)) for qwhere in qwheres)
            elif mutation in ("context", "qas", "not_object"):  # no question list to count: the paragraph counts
                expect[pwhere] = ("invalid", None)
            elif mutation == "surrogate":
                for qwhere, (kind, _) in zip(qwheres, kinds):
                    expect[qwhere] = ("invalid" if kind in ("valid", "invalid") else kind, None)
            else:
                expect.update(zip(qwheres, kinds))
        article = {"title": "t", "paragraphs": paragraphs}
        if article_mutation == "title":
            article["title"] = draw(st.sampled_from([None, 5, ["x"], {"a": 1}, ""]))
        data.append(article)
    document = {"version": draw(st.sampled_from(["v2.0", "1", 2])), "data": data}
    return json.dumps(document, ensure_ascii=ascii_only or draw(st.booleans())), expect, locations


@given(squad_file())
def test_squad_questions_are_kept_or_reported(case):
    text, expect, locations = case
    with scratch() as folder:
        path = folder / "qa.json"
        path.write_text(text, encoding="utf-8")
        check_load(str(path), [str(path)], expect, locations=locations)


@given(arbitrary_bytes)
def test_squad_arbitrary_bytes(data):
    """A .json file whose start says SQuAD (``{"data":``) followed by anything."""
    with scratch() as folder:
        path = folder / "qa.json"
        path.write_bytes(b'{"data": ' + data)
        _no_traceback(str(path), [str(path)])


@st.composite
def pair_files(draw):
    """Two line-aligned files (or not), with blank lines, CRLF and a BOM: ``(src, tgt, expect, aligned)``."""
    def line():
        return content.map(lambda text: NEWLINES.sub(" ", text))

    n = draw(st.integers(0, 6))
    sources, targets = draw(st.lists(line(), min_size=n, max_size=n)), draw(st.lists(line(), min_size=n, max_size=n))
    for side in (sources, targets):  # U+FEFF first in a file is its BOM, not text: the reader drops it, rightly
        if side:
            side[0] = side[0].lstrip(BOM) or "ا"
    expect = {}
    for i in range(n):
        if draw(st.integers(0, 4)) == 0:
            side = draw(st.sampled_from([sources, targets]))
            side[i] = draw(st.sampled_from(["", " ", "\t", "\xa0", "\u3000"]))
            expect[i + 1] = ("invalid", None)
        else:
            expect[i + 1] = ("valid", translation_conversation(sources[i], targets[i])["messages"])
    extra = draw(st.lists(line(), max_size=2))
    longer = draw(st.sampled_from([sources, targets]))
    longer += extra
    for i in range(n, n + len(extra)):
        expect[i + 1] = ("invalid", None)  # a line without its translation

    def encode(lines):
        newline = draw(st.sampled_from(["\n", "\r\n"]))
        # The newline after the last line is optional, except after an empty last line: "a\n" is one line.
        ending = newline if lines and (lines[-1] == "" or draw(st.booleans())) else ""
        return (draw(st.sampled_from(["", BOM])) + newline.join(lines) + ending).encode("utf-8")

    return encode(sources), encode(targets), expect, not extra


@given(pair_files())
def test_translation_pairs_are_kept_or_reported(case):
    src, tgt, expect, aligned = case
    with scratch() as folder:
        (folder / "en.txt").write_bytes(src)
        (folder / "fa.txt").write_bytes(tgt)
        names = [str(folder / "en.txt"), str(folder / "fa.txt")]
        check_load(f"{names[0]}+{names[1]}", names, expect, strict_prefix=aligned)


@given(arbitrary_bytes, arbitrary_bytes)
def test_translation_pairs_arbitrary_bytes(src, tgt):
    with scratch() as folder:
        (folder / "en.txt").write_bytes(src)
        (folder / "fa.txt").write_bytes(tgt)
        names = [str(folder / "en.txt"), str(folder / "fa.txt")]
        _no_traceback(f"{names[0]}+{names[1]}", names + [f"{names[0]}+{names[1]}"])
