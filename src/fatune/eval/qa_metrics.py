"""SQuAD 2.0 exact match and token F1 for Persian answers (PQuAD, ParsiNLU reading comprehension).

The scoring rules are the official SQuAD 2.0 script's: each prediction is scored against every gold
answer and the best score counts; a question with no (non-empty) gold answer scores 1 only for an empty
prediction. A generative model cannot answer with an empty string, so it is asked to say a fixed Persian
sentence instead (``fatune.data.squad.NO_ANSWER``), and a prediction that says it (or starts with it)
counts as the empty answer.

Only the normalisation differs from SQuAD's, because Persian text varies in ways English does not:

* text is NFC-composed first (so a decomposed ``آ`` keeps its maddah), then Arabic ``ي``/``ى``/``ك``
  become Persian ``ی``/``ک`` (same letters, different code points by keyboard) and ``ۀ`` becomes ``ه``;
* diacritics are dropped (harakat U+064B-U+0652, the optional maddah/hamza marks U+0653-U+0655 as in
  the ezafe of ``خانهٔ``, superscript alef U+0670) and so is the tatweel U+0640 (pure elongation);
* ZWNJ (U+200C) becomes a space: ``می‌رود``, ``میرود`` and ``می رود`` are all written in practice, and a
  space gives the first and last the same tokens; other invisible marks (ZWJ, LRM/RLM, BOM) are removed;
* Persian and Arabic-Indic digits become Latin ones, so ``۱۳۵۷`` matches ``1357``;
* punctuation is removed: ASCII punctuation as in SQuAD, plus every Unicode punctuation character
  (``، ؛ ؟ « » ٬ ٫ ٪``...), then the text is lower-cased (for Latin names) and whitespace collapsed.

SQuAD's rule that drops English articles (a, an, the) is not applied: Persian has no articles (the
indefinite ``ی`` is a suffix), and dropping ``یک`` ("one"/"a") would erase numbers from answers.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Sequence

from fatune.eval.stats import mean_ci

_CHARACTERS = str.maketrans({
    "ي": "ی", "ى": "ی", "ك": "ک", "ۀ": "ه",                # ۀ: heh with the ezafe hamza, as U+0654 below
    "\u200c": " ",                                         # ZWNJ: a word-internal break, scored like a space
    **{c: None for c in "\u200d\u200e\u200f\ufeff\u0640"},  # ZWJ, LRM, RLM, BOM, tatweel
    **{chr(c): None for c in range(0x064B, 0x0656)}, "\u0670": None,
    **{chr(0x06F0 + d): str(d) for d in range(10)}, **{chr(0x0660 + d): str(d) for d in range(10)},
})
_ASCII_PUNCTUATION = set(string.punctuation)
_SPACES = re.compile(r"\s+")


def _is_punctuation(char: str) -> bool:
    return char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


def normalize_answer(text: str) -> str:
    """Persian-aware SQuAD normalisation (see the module docstring): letters, marks, digits, punctuation,
    case and whitespace."""
    text = unicodedata.normalize("NFC", text).translate(_CHARACTERS)
    text = "".join(char for char in text if not _is_punctuation(char))
    return _SPACES.sub(" ", text.lower()).strip()


def _gold_texts(golds: Sequence[str]) -> list[str]:
    # As in SQuAD 2.0: golds that normalise to nothing are dropped, and no gold at all means "no answer".
    kept = [g for g in golds if normalize_answer(g)]
    return kept or [""]


def _f1_one(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)  # both empty is a match; one empty is a miss
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0 (SQuAD 2.0 rules)."""
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(g) for g in _gold_texts(golds)))


def f1(prediction: str, golds: Sequence[str]) -> float:
    """Best token-overlap F1 (0..1) of the prediction against the gold answers (SQuAD 2.0 rules)."""
    return max(_f1_one(prediction, g) for g in _gold_texts(golds))


def is_no_answer(prediction: str, no_answer_text: str) -> bool:
    """True when the model gave the fixed no-answer sentence: equal after normalisation, or starting with
    its tokens (a model often adds a clause after it: "... نیامده است، زیرا ...")."""
    sentence = normalize_answer(no_answer_text).split()
    if not sentence:
        raise ValueError("the no-answer text is empty after normalisation")
    return normalize_answer(prediction).split()[:len(sentence)] == sentence


def _golds(item) -> list[str]:
    return [] if item.impossible else list(item.answers)


def qa_scores(predictions: Sequence[str], items: Sequence, no_answer_text: str | None = None,
              resamples: int = 2000, seed: int = 0) -> dict:
    """Exact match and F1 (0-100, as SQuAD reports them) of ``predictions`` for ``items``.

    ``items`` are ``QAItem``s (anything with ``id``, ``answers`` and ``impossible``). A prediction that is
    the no-answer sentence (``no_answer_text``, by default ``fatune.data.squad.NO_ANSWER``) counts as empty.
    Returns the headline scores, ``f1_ci95`` (bootstrap over questions), F1 on answerable
    (``has_ans_f1``) and unanswerable (``no_ans_f1``) questions (``None`` when there are none), how often
    the model declined (``no_answer_rate``), ``item_ids`` and ``per_item`` scores (0-100 each)."""
    if len(predictions) != len(items):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} questions")
    if no_answer_text is None:
        from fatune.data.squad import NO_ANSWER

        no_answer_text = NO_ANSWER
    declined = [is_no_answer(p, no_answer_text) for p in predictions]
    answers = ["" if d else p for p, d in zip(predictions, declined)]
    em = [100 * exact_match(a, _golds(item)) for a, item in zip(answers, items)]
    f1s = [100 * f1(a, _golds(item)) for a, item in zip(answers, items)]

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 2) if values else None

    has_answer = [not item.impossible for item in items]
    n = len(items)
    return {"exact_match": mean(em) or 0.0, "f1": mean(f1s) or 0.0,
            "f1_ci95": [round(v, 2) for v in mean_ci(f1s, resamples, seed)] if n else None,
            "has_ans_f1": mean([v for v, h in zip(f1s, has_answer) if h]),
            "no_ans_f1": mean([v for v, h in zip(f1s, has_answer) if not h]),
            "has_ans_n": sum(has_answer), "no_ans_n": n - sum(has_answer),
            "no_answer_rate": round(sum(declined) / n, 4) if n else 0.0, "n": n,
            "item_ids": [str(item.id) for item in items],
            "per_item": {"exact_match": em, "f1": [round(v, 4) for v in f1s],
                         "answerable": [int(h) for h in has_answer]}}
