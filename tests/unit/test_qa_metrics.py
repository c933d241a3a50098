"""SQuAD 2.0 exact match and F1 with Persian normalisation, against small hand-computed tables."""

from dataclasses import dataclass, field

import pytest

from fatune.eval.qa_metrics import exact_match, f1, is_no_answer, normalize_answer, qa_scores

NO_ANSWER = "پاسخ این پرسش در متن نیامده است."


@pytest.mark.parametrize("text, normalized", [
    ("كتاب عربي", "کتاب عربی"),                      # Arabic kaf and yeh become Persian
    ("مُحَمَّدٌ", "محمد"),                              # harakat dropped
    ("تهـــران", "تهران"),                            # tatweel dropped
    ("خانهٔ من", "خانه من"),                           # ezafe hamza dropped
    ("خانۀ من", "خانه من"),                           # ... also in its precomposed form
    ("قرآن", "قرآن"), ("قرا\u0653ن", "قرآن"),          # a decomposed alef madda composes, keeps its madda
    ("می‌روم", "می روم"),                              # ZWNJ becomes a space
    ("می\u200dروم\u200f", "میروم"),                    # ZWJ and RLM are dropped
    ("سال ۱۳۵۷ و ١٤٠٢", "سال 1357 و 1402"),          # Persian and Arabic-Indic digits
    ("«تهران»، ایران؛ چرا؟", "تهران ایران چرا"),      # Persian punctuation
    ("۳٫۵٪ و ۱٬۰۰۰", "35 و 1000"),                    # decimal and thousands separators, percent sign
    ("The  Cat!", "the cat"),                          # case and spaces; 'the' is kept (no article rule)
    ("  یک   کتاب \n", "یک کتاب"),                     # 'یک' (one / a) is content
    ("", ""), ("؟!", ""),
])
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize("prediction, golds, em, score", [
    ("تهران", ["تهران"], 1.0, 1.0),
    ("شهر تهران", ["تهران"], 0.0, 2 * 0.5 * 1 / 1.5),                  # precision 1/2, recall 1
    ("تهران", ["شهر تهران", "پایتخت"], 0.0, 2 * 1 * 0.5 / 1.5),        # max over golds
    ("پایتخت", ["شهر تهران", "پایتخت"], 1.0, 1.0),
    ("كتاب‌ها", ["کتاب ها"], 1.0, 1.0),                                  # normalisation applies to both
    ("۱۳۵۷", ["سال 1357"], 0.0, 2 * 1 * 0.5 / 1.5),
    ("ایران ایران", ["ایران"], 0.0, 2 * 0.5 * 1 / 1.5),                  # repeated tokens count once in the overlap
    ("مشهد", ["تهران"], 0.0, 0.0),
    ("", [], 1.0, 1.0),                                                   # no gold: only an empty prediction scores
    ("تهران", [], 0.0, 0.0),
    ("", ["تهران"], 0.0, 0.0),
    ("", ["؟", "..."], 1.0, 1.0),                                        # golds that normalise to nothing are dropped
])
def test_exact_match_and_f1(prediction, golds, em, score):
    assert exact_match(prediction, golds) == em
    assert f1(prediction, golds) == pytest.approx(score)


@pytest.mark.parametrize("prediction, declined", [
    (NO_ANSWER, True),
    ("پاسخ اين پرسش در متن نيامده است", True),                          # Arabic yeh, no full stop
    (NO_ANSWER + " زیرا متن درباره چیز دیگری است.", True),              # starts with it
    ("«" + NO_ANSWER + "»", True),
    ("پاسخ این پرسش", False),                                           # only the beginning
    ("تهران", False), ("", False),
])
def test_is_no_answer(prediction, declined):
    assert is_no_answer(prediction, NO_ANSWER) is declined


def test_is_no_answer_rejects_an_empty_sentence():
    with pytest.raises(ValueError):
        is_no_answer("x", "؟")


@dataclass
class Item:
    id: str
    answers: list = field(default_factory=list)
    impossible: bool = False


def test_qa_scores():
    items = [Item("q1", ["تهران"]), Item("q2", ["شهر تهران"]), Item("q3", impossible=True), Item("q4", impossible=True),
             Item("q5", ["مشهد"])]
    predictions = ["تهران", "تهران", NO_ANSWER, "اصفهان", NO_ANSWER]
    scores = qa_scores(predictions, items, NO_ANSWER)
    per_f1 = [100.0, 100 * 2 / 3, 100.0, 0.0, 0.0]
    assert scores["per_item"] == {"exact_match": [100.0, 0.0, 100.0, 0.0, 0.0],
                                  "f1": [pytest.approx(v, abs=1e-4) for v in per_f1], "answerable": [1, 1, 0, 0, 1]}
    assert scores["item_ids"] == ["q1", "q2", "q3", "q4", "q5"] and scores["n"] == 5
    assert scores["exact_match"] == 40.0 and scores["f1"] == round(sum(per_f1) / 5, 2)
    assert scores["has_ans_f1"] == round((100 + 200 / 3 + 0) / 3, 2) and scores["no_ans_f1"] == 50.0
    assert (scores["has_ans_n"], scores["no_ans_n"], scores["no_answer_rate"]) == (3, 2, 0.4)
    low, high = scores["f1_ci95"]
    assert 0 <= low <= scores["f1"] <= high <= 100


def test_qa_scores_without_unanswerable_questions_and_defaults():
    scores = qa_scores(["تهران"], [Item("a", ["تهران"])])  # NO_ANSWER from fatune.data.squad by default
    assert scores["no_ans_f1"] is None and scores["has_ans_f1"] == 100.0 and scores["f1_ci95"] == [100.0, 100.0]
    with pytest.raises(ValueError):
        qa_scores(["a", "b"], [Item("a", ["a"])])


def test_no_answer_default_is_the_training_data_sentence():
    from fatune.data.squad import NO_ANSWER as TRAINED

    assert TRAINED == NO_ANSWER
