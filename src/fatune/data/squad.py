"""SQuAD 2.0 JSON files (PQuAD, PersianQA, ...) as validated questions and as chat conversations.

A SQuAD file is one JSON document: ``{"version", "data": [{"title", "paragraphs": [{"context",
"qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}``.
``read_squad`` yields one ``QAItem`` per question; a bad question is a ``DataError`` located by its
JSON path, so the message reads ``FILE: data[3].paragraphs[0].qas[5]: what is wrong (field)``.
Answers are checked strictly: ``text == context[answer_start:answer_start + len(text)]`` (all 7,976
questions of PQuAD's validation split pass). ``articles`` (a slice) picks articles, so training and
evaluation can use disjoint ones.

Conversation layout
-------------------
No system message. The user turn is ``QA_INSTRUCTION``, the context and the question::

    متن زیر را بخوانید و با عبارتی کوتاه از خود متن به پرسش پاسخ دهید. اگر پاسخ در متن نیست، بنویسید: «...»

    متن: {context}

    پرسش: {question}

The assistant answers with the first gold answer, or ``NO_ANSWER`` for an unanswerable question.
Extractive answers keep the model's output scoreable by exact match and F1 against the gold spans.

For training, ``questions_per_chat`` above 1 asks up to that many questions of one paragraph in one
multi-turn chat: the first user turn is the layout above, each further user turn is only
``پرسش: {question}``. A PQuAD passage is ~250 tokens and a question with its answer ~40, so one chat of
six questions trains six answers for the passage's tokens once, where six single-question chats pay for
the passage six times (measured in docs/persian-tasks.md). Evaluation always asks one question per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fatune.data.records import LoadStats, local_path, select_rows, skip_or_raise
from fatune.data.validate import load_json
from fatune.errors import DataError

NO_ANSWER = "پاسخ این پرسش در متن نیامده است."
"""The assistant's answer to an unanswerable question; the instruction quotes it verbatim, so the
evaluation can recognize an abstention by exact match."""

QA_INSTRUCTION = ("متن زیر را بخوانید و با عبارتی کوتاه از خود متن به پرسش پاسخ دهید. "
                  f"اگر پاسخ در متن نیست، بنویسید: «{NO_ANSWER}»")
"""The first paragraph of the user turn: answer with a short span of the passage (SQuAD is extractive,
so a short copied span scores on exact match and F1), or say ``NO_ANSWER`` (SQuAD 2.0 has unanswerable
questions)."""


@dataclass
class QAItem:
    """One validated question of a SQuAD file."""

    id: str
    article: int  # index of the article in the file's ``data`` list (not in a selection)
    title: str
    context: str
    question: str
    answers: list[str]  # gold answer texts; empty for an unanswerable question
    impossible: bool
    location: str  # JSON path, as in ``data[3].paragraphs[0].qas[5]``


def qa_prompt(item: QAItem) -> list[dict[str, str]]:
    """The messages that ask ``item``'s question (ending with the user turn; no system message)."""
    content = f"{QA_INSTRUCTION}\n\nمتن: {item.context.strip()}\n\nپرسش: {item.question.strip()}"
    return [{"role": "user", "content": content}]


def qa_conversation(item: QAItem) -> dict:
    """``item`` as ``{"messages": [...]}``: the prompt, then ``answers[0]`` or ``NO_ANSWER``."""
    answer = NO_ANSWER if item.impossible or not item.answers else item.answers[0].strip()
    return {"messages": [*qa_prompt(item), {"role": "assistant", "content": answer}]}


def qa_chat(items: list[QAItem]) -> dict:
    """Several questions on one passage as one chat: ``qa_prompt(items[0])`` and its answer, then for each
    further item a user turn ``پرسش: {question}`` and its answer (``items`` share one context)."""
    first, *rest = items
    messages = qa_conversation(first)["messages"]
    for item in rest:
        answer = qa_conversation(item)["messages"][-1]
        messages += [{"role": "user", "content": f"پرسش: {item.question.strip()}"}, answer]
    return {"messages": messages}


def _load_json(path: Path, name: str) -> Any:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(name, None, f"invalid UTF-8 at byte {error.start + 1}; save the file as UTF-8", None,
                        "invalid_utf8") from None
    try:
        return load_json(text)  # RecursionError and the 4300-digit ValueError too (found by fuzzing)
    except ValueError as error:  # a JSONDecodeError
        raise DataError(name, error.lineno, f"not valid JSON: {error.msg} at column {error.colno}", None,
                        "invalid_json") from None


def _check_question(qa: Any, context: str, where: str, name: str) -> tuple[str, list[str], bool]:
    """Validate one entry of ``qas``; return its question, answer texts and whether it is unanswerable."""
    def fail(message: str, field: str | None, reason: str):
        raise DataError(name, where, message, field, reason)

    if not isinstance(qa, dict):
        fail(f"a question must be an object, found {type(qa).__name__}", None, "bad_question")
    question = qa.get("question")
    if not isinstance(question, str) or not question.strip():
        fail("the question is missing or empty", "question", "empty_question")
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        fail(f"is_impossible must be true or false, found {impossible!r}", "is_impossible", "bad_answer")
    answers = qa.get("answers", [])
    if not isinstance(answers, list):
        fail(f"answers must be a list, found {type(answers).__name__}", "answers", "bad_answer")
    if impossible and answers:
        fail("an unanswerable question (is_impossible: true) must have no answers", "answers", "bad_answer")
    if not impossible and not answers:
        fail("an answerable question needs at least one answer (or is_impossible: true)", "answers", "no_answer")
    texts = []
    for i, answer in enumerate(answers):
        text = answer.get("text") if isinstance(answer, dict) else None
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if not isinstance(text, str) or not text.strip():
            fail("the answer text is missing or empty", f"answers[{i}].text", "bad_answer")
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            fail(f"answer_start must be a non-negative integer, found {start!r}", f"answers[{i}].answer_start",
                 "bad_answer")
        if context[start:start + len(text)] != text:
            fail("answer text does not match the context at answer_start", f"answers[{i}].answer_start",
                 "span_mismatch")
        texts.append(text)
    return question, texts, impossible


def read_squad(path: str | Path, name: str | None = None, articles: slice | None = None,
               skip_invalid: bool = False, stats: LoadStats | None = None) -> Iterator[QAItem]:
    """Yield every valid question of the SQuAD 2.0 file ``path`` (of the ``articles`` slice if given).

    ``name`` is how errors name the file (default: the path). With ``skip_invalid`` a bad question, or
    every question of a paragraph with a bad context, is counted in ``stats`` instead of raised; a file
    that is not SQuAD JSON at all is always an error.
    """
    path = local_path(path)
    name = name or str(path)
    document = _load_json(path, name)
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise DataError(name, None, 'not a SQuAD file: expected {"data": [{"title", "paragraphs"}, ...]}', "data",
                        "unknown_format")
    for index, article in select_rows(data, articles, name, "articles"):
        where = f"data[{index}]"
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            skip_or_raise(DataError(name, where, "an article needs a list of paragraphs", "paragraphs",
                                    "unknown_format"), skip_invalid, stats)
            continue
        title = str(article.get("title") or "")
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{index}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            try:
                if not isinstance(context, str) or not context.strip():
                    raise DataError(name, where, "the context is missing or empty", "context", "empty_context")
                if not isinstance(qas, list):
                    raise DataError(name, where, "a paragraph needs a list of questions", "qas", "unknown_format")
            except DataError as error:
                # Every question of the paragraph is lost, so each one is counted (as the docstring promises);
                # counting the paragraph once hid the others from the skip report (found by fuzzing).
                for _ in range(len(qas) if isinstance(qas, list) and qas else 1):
                    skip_or_raise(error, skip_invalid, stats)
                continue
            for q, qa in enumerate(qas):
                where = f"data[{index}].paragraphs[{p}].qas[{q}]"
                try:
                    question, answers, impossible = _check_question(qa, context, where, name)
                except DataError as error:
                    skip_or_raise(error, skip_invalid, stats)
                    continue
                yield QAItem(str(qa.get("id", where)), index, title, context, question, answers, impossible, where)


def squad_records(path: Path, name: str, articles: slice | None, skip_invalid: bool, stats: LoadStats,
                  questions_per_chat: int = 1) -> Iterator[tuple[str, dict, str]]:
    """``load_conversations``' reader: ``(json_path, conversation, group)``, grouped by article.

    With ``questions_per_chat`` > 1, consecutive questions of one paragraph (in file order, at most that
    many) become one ``qa_chat``, located at its first question."""
    if questions_per_chat < 1:
        raise ValueError(f"questions_per_chat must be at least 1, not {questions_per_chat}")
    chunk: list[QAItem] = []
    for item in read_squad(path, name, articles, skip_invalid, stats):
        if chunk and (len(chunk) == questions_per_chat or _paragraph(item) != _paragraph(chunk[0])):
            yield chunk[0].location, qa_chat(chunk), f"{name}#{chunk[0].article}"
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk[0].location, qa_chat(chunk), f"{name}#{chunk[0].article}"


def _paragraph(item: QAItem) -> str:
    """The JSON path of ``item``'s paragraph (``data[3].paragraphs[0]``): questions with one path share a context."""
    return item.location.rsplit(".qas[", 1)[0]
