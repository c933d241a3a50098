"""Pure evaluation metrics: Persian share, loops, echoes, Wilson intervals, choice scoring, fidelity, loss units."""

import math

import pytest

from fatune.data.script import persian_share
from fatune.eval.metrics import (
    argmax_choice,
    bits_per_byte,
    choice_accuracy,
    confusion_matrix,
    fidelity_flags,
    fidelity_summary,
    is_degenerate,
    is_echo,
    mostly_persian,
    normalized_choice,
    perplexity,
    repeated_ngram_ratio,
    wilson_ci,
)

NATURAL = ("تهران پایتخت ایران است و بزرگ‌ترین شهر کشور به شمار می‌رود. این شهر در دامنه کوه‌های البرز "
           "قرار دارد و جمعیت آن بیش از هشت میلیون نفر است. تاریخ تهران به دوره قاجار بازمی‌گردد.")
LOOP = "من نمی‌دانم که چه بگویم. " * 6


@pytest.mark.parametrize("text, share", [
    ("سلام hello ۱۲۳", 4 / 9),        # digits are not letters: 4 Persian of 9 letters
    ("سلام دنیا", 1.0),
    ("hello world", 0.0),
    ("۱۲۳ 456 !؟", 0.0),              # no letters at all
    ("", 0.0),
])
def test_persian_share(text, share):
    assert persian_share(text) == pytest.approx(share)


@pytest.mark.parametrize("text, threshold, expected", [
    ("سلام hello ۱۲۳", 0.5, False),   # 4/9 < 0.5
    ("سلام hello ۱۲۳", 0.4, True),
    ("سلام دنیا، hi", 0.5, True),     # 8/10
    ("hello", 0.5, False),
    ("۱۲۳", 0.0, False),              # no letters is never Persian, even at threshold 0
    ("", 0.5, False),
])
def test_mostly_persian(text, threshold, expected):
    assert mostly_persian(text, threshold) is expected


@pytest.mark.parametrize("text, degenerate", [
    (NATURAL, False),                             # natural Persian prose
    (LOOP, True),                                 # the same sentence six times
    ("ههههههههههه", True),                        # one-char loop, no spaces
    ("سلامسلامسلامسلامسلام", True),               # a word glued to itself five times
    ("سلامسلامسلام", False),                      # three times is not yet a loop
    ("abcdefghij" * 5, True),                     # a 10-char chunk repeated five times
    ("سلام دنیا", False),                         # short text
    ("عنوان\n" + "-" * 30 + "\nمتن", False),      # a markdown rule is layout, not a loop
])
def test_is_degenerate(text, degenerate):
    assert is_degenerate(text) is degenerate


@pytest.mark.parametrize("text, n, ratio", [
    ("a b c", 4, 0.0),                   # fewer than n tokens
    ("a b c d e f", 4, 0.0),             # no repeats
    ("a b a b a b", 2, 3 / 5),           # (a b) (b a) then three repeats of those
    ("x x x x x x", 4, 2 / 3),           # three 4-grams, two repeat the first
])
def test_repeated_ngram_ratio(text, n, ratio):
    assert repeated_ngram_ratio(text, n) == pytest.approx(ratio)


PROMPT = "یک شعر کوتاه درباره باران بنویس"


@pytest.mark.parametrize("answer, prompt, echo", [
    (PROMPT, PROMPT, True),                                          # verbatim copy
    (PROMPT + "،", PROMPT, True),                                    # copy with punctuation added
    ("باران", PROMPT, False),                                        # quotes one word
    ("باران می‌بارد و زمین خیس می‌شود", PROMPT, False),            # reuses one word in a real answer
    ("پایتخت ایران تهران است.", "پایتخت ایران کجاست؟", False),    # 2 of 4 words copied < 0.6
    ("امروز هوا آفتابی و گرم است", PROMPT, False),                  # unrelated Persian answer
    ("", PROMPT, False),                                             # empty is not an echo
    ("Write A Short Poem", "write a short poem about rain", True),  # case-insensitive
])
def test_is_echo(answer, prompt, echo):
    assert is_echo(answer, prompt) is echo


@pytest.mark.parametrize("successes, total, lo, hi", [
    (50, 100, 0.4038, 0.5962),
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (1, 2, 0.0945, 0.9055),
    (0, 0, 0.0, 1.0),
])
def test_wilson_ci(successes, total, lo, hi):
    got = wilson_ci(successes, total)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    assert 0.0 <= got[0] <= got[1] <= 1.0


def test_wilson_ci_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_ci(11, 10)


def test_confusion_matrix():
    labels = ["entailment", "contradiction", "neutral"]
    gold = ["entailment", "entailment", "neutral", "contradiction"]
    predicted = ["entailment", "neutral", "neutral", "entailment"]
    matrix = confusion_matrix(gold, predicted, labels)
    assert matrix == {
        "entailment": {"entailment": 1, "contradiction": 0, "neutral": 1},
        "contradiction": {"entailment": 1, "contradiction": 0, "neutral": 0},
        "neutral": {"entailment": 0, "contradiction": 0, "neutral": 1},
    }
    assert confusion_matrix([], [], labels)["neutral"] == {label: 0 for label in labels}


@pytest.mark.parametrize("gold, predicted", [(["neutral"], []), (["neutral"], ["unknown"])])
def test_confusion_matrix_rejects_bad_input(gold, predicted):
    with pytest.raises(ValueError):
        confusion_matrix(gold, predicted, ["neutral", "entailment"])


@pytest.mark.parametrize("scores, choice", [
    ([-3.0, -1.0, -2.0], 1),
    ([-1.0, -1.0, -2.0], 0),               # tie goes to the lowest index
    ([-5.0, -2.0, -2.0], 1),
    ([-0.5], 0),
    ([float("nan"), -4.0, -9.0], 1),       # NaN never wins
])
def test_argmax_choice(scores, choice):
    assert argmax_choice(scores) == choice


def test_argmax_choice_rejects_no_options():
    with pytest.raises(ValueError):
        argmax_choice([])


def test_choice_accuracy():
    scores = [[-1.0, -2.0], [-3.0, -1.0, -2.0], [-1.0, -1.0], [-2.0, -0.5]]
    result = choice_accuracy(scores, [0, 2, 0, 1])   # right, wrong, right (tie -> 0), right
    assert result["correct"] == 3 and result["total"] == 4
    assert result["accuracy"] == 0.75
    lo, hi = result["accuracy_ci95"]
    assert (lo, hi) == pytest.approx(wilson_ci(3, 4), abs=1e-4)
    assert result["per_item"] == {"accuracy": [1, 0, 1, 1]} and "acc_norm" not in result
    assert choice_accuracy([], []) == {"accuracy": 0.0, "correct": 0, "total": 0, "accuracy_ci95": [0.0, 1.0],
                                       "per_item": {"accuracy": []}}


@pytest.mark.parametrize("scores, sizes, choice", [
    ([-10.0, -12.0], [2, 12], 1),           # -5/byte vs -1/byte: the long option wins once normalised
    ([-10.0, -12.0], [10, 10], 0),          # equal lengths: same pick as plain argmax
    ([-6.0, -3.0, -9.0], [6, 2, 9], 0),     # -1, -1.5, -1 per byte: the tie goes to the lowest index
    ([-4.0, -4.0], [0, 4], 1),              # an empty option counts as one byte
])
def test_normalized_choice(scores, sizes, choice):
    assert normalized_choice(scores, sizes) == choice


def test_normalized_choice_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        normalized_choice([-1.0, -2.0], [3])


def test_choice_accuracy_with_acc_norm():
    # Per question: log-likelihoods, option lengths in UTF-8 bytes, gold index.
    table = [
        ([-4.0, -9.0], [2, 18], 1),       # plain picks 0 (wrong); per byte -2 vs -0.5 picks 1 (right)
        ([-4.0, -9.0], [2, 18], 0),       # plain right, normalised wrong
        ([-2.0, -3.0, -8.0], [4, 4, 4], 0),  # equal lengths: both right
        ([-5.0, -1.0], [8, 8], 0),        # both wrong
    ]
    scores, sizes, gold = (list(column) for column in zip(*table))
    result = choice_accuracy(scores, gold, sizes)
    assert result["per_item"] == {"accuracy": [0, 1, 1, 0], "acc_norm": [1, 0, 1, 0]}
    assert (result["accuracy"], result["acc_norm"]) == (0.5, 0.5)
    assert result["acc_norm_ci95"] == [round(v, 4) for v in wilson_ci(2, 4)]
    with pytest.raises(ValueError):
        choice_accuracy(scores, gold, sizes[:2])
    # Persian options are two bytes a letter: "بله" (6 bytes) against "no" (2 bytes).
    assert choice_accuracy([[-6.0, -2.5]], [0], [[len("بله".encode()), len("no".encode())]])["acc_norm"] == 1.0


def test_fidelity_summary():
    rows = [
        # (prompt, answer, hit_limit)
        ("پایتخت ایران کجاست؟", "پایتخت ایران تهران است.", False),   # clean Persian
        (PROMPT, PROMPT, False),                                          # Persian, but an echo
        ("سلام، حالت چطور است؟", "   ", False),                         # empty
        ("درباره کتاب بنویس", "کتاب خوب است. " * 6, True),              # Persian, but a loop
        ("What is the weather like?", "It is sunny today.", False),      # not Persian
        ("Translate: hello", "hello یعنی سلام", False),                 # mixed, 8/13 Persian: clean
    ]
    prompts, answers, hit = (list(column) for column in zip(*rows))
    summary = fidelity_summary(answers, prompts, hit)
    assert summary == {
        "n": 6,
        "persian_share": round((1 + 1 + 0 + 1 + 0 + 8 / 13) / 6, 4),   # 0.6026
        "mostly_persian_rate": round(4 / 6, 4),
        "empty_rate": round(1 / 6, 4),
        "echo_rate": round(1 / 6, 4),
        "degenerate_rate": round(1 / 6, 4),
        "hit_limit_rate": round(1 / 6, 4),
        "clean_persian_rate": round(2 / 6, 4),
    }
    # Echoing a Persian prompt raises the Persian rate but not the clean one.
    assert summary["clean_persian_rate"] < summary["mostly_persian_rate"]


def test_fidelity_flags_are_the_per_answer_rates():
    prompts = ["پایتخت ایران کجاست؟", PROMPT, "سلام", "درباره کتاب بنویس"]
    answers = ["پایتخت ایران تهران است.", PROMPT, " ", "کتاب خوب است. " * 6]
    hit = [False, False, False, True]
    flags = fidelity_flags(answers, prompts, hit)
    assert flags == {"mostly_persian": [1, 1, 0, 1], "empty": [0, 0, 1, 0], "echo": [0, 1, 0, 0],
                     "degenerate": [0, 0, 0, 1], "hit_limit": [0, 0, 0, 1], "clean_persian": [1, 0, 0, 0]}
    summary = fidelity_summary(answers, prompts, hit)
    for name, values in flags.items():
        assert summary[f"{name}_rate"] == round(sum(values) / len(values), 4)


def test_fidelity_summary_empty_and_mismatched():
    assert fidelity_summary([], [], [])["n"] == 0
    assert fidelity_summary([], [], [])["clean_persian_rate"] == 0.0
    with pytest.raises(ValueError):
        fidelity_summary(["سلام"], [], [False])


@pytest.mark.parametrize("nll, n_bytes, bpb", [
    (100 * math.log(2), 50, 2.0),
    (0.0, 10, 0.0),
    (math.log(2), 1, 1.0),
])
def test_bits_per_byte(nll, n_bytes, bpb):
    assert bits_per_byte(nll, n_bytes) == pytest.approx(bpb)


def test_bits_per_byte_rejects_zero_bytes():
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


@pytest.mark.parametrize("mean_nll, ppl", [
    (0.0, 1.0),
    (math.log(10), 10.0),
    (2.0, math.exp(2.0)),
    (1e4, math.inf),        # would overflow exp()
])
def test_perplexity(mean_nll, ppl):
    assert perplexity(mean_nll) == pytest.approx(ppl)


@pytest.mark.parametrize("n, limit, expected", [
    (10, None, list(range(10))), (10, 20, list(range(10))), (10, 5, [0, 2, 4, 6, 8]), (7, 3, [0, 2, 4]),
    (204, 2, [0, 102]), (3, 0, []),
])
def test_spread_takes_evenly_spaced_items_in_order(n, limit, expected):
    from fatune.eval.tasks import spread

    assert spread(list(range(n)), limit) == expected
