"""Seeded bootstrap intervals and paired gains: known answers, determinism, coverage and the gains API."""

import math

import numpy as np
import pytest

from fatune.eval.stats import GAIN_METRICS, bootstrap_ci, gains, mean_ci, paired_bootstrap, task_kind


def mean_of(values):
    array = np.asarray(values, dtype=float)
    return lambda rows: float(array[rows].mean())


def test_bootstrap_ci_is_seeded_and_brackets_the_statistic():
    values = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    first = bootstrap_ci(len(values), mean_of(values))
    assert first == bootstrap_ci(len(values), mean_of(values))        # same seed, same interval
    assert first != bootstrap_ci(len(values), mean_of(values), seed=1)
    assert first[0] <= 0.7 <= first[1] and 0 <= first[0] < first[1] <= 1
    narrow = bootstrap_ci(len(values), mean_of(values), level=0.5)
    assert first[0] <= narrow[0] <= narrow[1] <= first[1]


def test_mean_ci_equals_the_generic_bootstrap_of_the_mean():
    values = np.random.default_rng(3).normal(size=40)
    assert mean_ci(values, seed=5) == pytest.approx(bootstrap_ci(40, mean_of(values), seed=5), abs=1e-12)


def test_constant_values_give_a_point_interval():
    assert mean_ci([0.25] * 7) == pytest.approx([0.25, 0.25])


@pytest.mark.parametrize("call", [
    lambda: bootstrap_ci(0, lambda rows: 0.0),
    lambda: mean_ci([]),
    lambda: mean_ci([1.0], level=1.0),
    lambda: mean_ci([1.0], resamples=0),
])
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


def test_paired_bootstrap_of_identical_statistics_is_exactly_zero():
    values = np.random.default_rng(0).random(30)
    assert paired_bootstrap(30, mean_of(values), mean_of(values)) == (0.0, [0.0, 0.0])


def test_paired_bootstrap_of_a_constant_shift_is_the_shift():
    values = np.random.default_rng(1).random(25)
    delta, (low, high) = paired_bootstrap(25, mean_of(values + 2.0), mean_of(values))
    assert delta == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)


def test_pairing_removes_the_item_difficulty():
    # Items differ a lot in difficulty (shared by both models); model A is better by 0.05 on every item.
    # Paired, the gain is certain; two independent intervals would overlap widely.
    difficulty = np.random.default_rng(2).random(50)
    a, b = difficulty + 0.05, difficulty
    delta, (low, high) = paired_bootstrap(50, mean_of(a), mean_of(b))
    assert delta == pytest.approx(0.05) and low > 0
    ci_a, ci_b = mean_ci(a), mean_ci(b)
    assert ci_a[0] < ci_b[1]  # the unpaired intervals overlap


def test_interval_coverage_with_a_fixed_seed():
    """About 95% of the intervals of samples from a known distribution contain its mean."""
    rng = np.random.default_rng(123)
    trials, covered = 200, 0
    for trial in range(trials):
        sample = rng.normal(loc=1.0, scale=2.0, size=60)
        low, high = mean_ci(sample, resamples=1000, seed=trial)
        covered += low <= 1.0 <= high
    assert 0.88 <= covered / trials <= 0.99  # percentile bootstrap runs slightly narrow at n=60


@pytest.mark.parametrize("key, kind", [("qa:pquad", "qa"), ("translate:eng-US", "translate"), ("loss", "loss"),
                                       ("mc:quiz", "mc"), ("sib200:dev", "sib200"), ("farstail", "farstail")])
def test_task_kind(key, kind):
    assert task_kind(key) == kind and kind in GAIN_METRICS


def result(ids, **per_item):
    return {"item_ids": list(ids), "per_item": per_item}


def test_gains_of_accuracy_and_direction_flags():
    run = result("abcd", accuracy=[1, 1, 1, 0], acc_norm=[1, 0, 1, 0])
    reference = result("abcd", accuracy=[0, 1, 0, 0], acc_norm=[1, 0, 1, 0])
    out = gains(run, reference, "mc:quiz")
    assert set(out) == {"accuracy", "acc_norm"}
    assert out["accuracy"]["delta"] == pytest.approx(0.5) and out["accuracy"]["higher_is_better"] is True
    assert out["acc_norm"] == {"delta": 0.0, "ci95": [0.0, 0.0], "significant": False, "higher_is_better": True}
    low, high = out["accuracy"]["ci95"]
    assert 0 <= low <= 0.5 <= high <= 1


def test_a_consistent_gain_is_significant():
    ids = [str(i) for i in range(40)]
    out = gains(result(ids, f1=[80.0] * 40, exact_match=[100.0] * 40),
                result(ids, f1=[60.0] * 20 + [80.0] * 20, exact_match=[0.0] * 40), "qa:x")
    assert out["f1"]["delta"] == pytest.approx(10.0) and out["f1"]["significant"]
    assert out["exact_match"] == {"delta": 100.0, "ci95": [100.0, 100.0], "significant": True,
                                  "higher_is_better": True}


def test_fidelity_gains_read_the_flags_and_lower_is_better():
    flags = dict(clean_persian=[1, 1, 0], degenerate=[0, 0, 1], hit_limit=[0, 1, 1], echo=[0, 0, 0])
    base = dict(clean_persian=[0, 0, 0], degenerate=[1, 1, 1], hit_limit=[1, 1, 1], echo=[0, 0, 0])
    out = gains(result("012", **flags), result("012", **base), "fidelity")
    assert out["clean_persian_rate"]["delta"] == pytest.approx(2 / 3)
    assert out["degenerate_rate"]["delta"] == pytest.approx(-2 / 3)
    assert out["degenerate_rate"]["higher_is_better"] is False and out["echo_rate"]["delta"] == 0.0


def test_bits_per_byte_gain_is_a_ratio_of_sums():
    run = result("ab", nll=[10 * math.log(2), 10 * math.log(2)], bytes=[10, 30])     # 20 bits / 40 bytes
    reference = result("ab", nll=[30 * math.log(2), 10 * math.log(2)], bytes=[10, 30])  # 40 bits / 40 bytes
    out = gains(run, reference, "loss")
    assert out["bits_per_byte"]["delta"] == pytest.approx(0.5 - 1.0)  # not the mean of per-row ratios
    assert out["bits_per_byte"]["higher_is_better"] is False


def test_translation_gains_recompute_the_corpus_score():
    from fatune.eval.mt_metrics import corpus_score, mt_scores

    references = ["تهران پایتخت ایران است.", "هوا امروز آفتابی است.", "کتاب روی میز است."]
    good = ["تهران پایتخت ایران است.", "امروز هوا آفتابی است.", "کتاب روی میز است."]
    bad = ["تهران شهر است.", "باران می‌بارد.", "میز بزرگ است."]
    run, reference = mt_scores(good, references), mt_scores(bad, references)
    ids = ["1", "2", "3"]
    out = gains({**run, "item_ids": ids}, {**reference, "item_ids": ids}, "translate:eng")
    assert set(out) == {"chrf", "chrf_plus_plus", "bleu"}
    for metric in out:
        expected = corpus_score(metric, good, references) - corpus_score(metric, bad, references)
        assert out[metric]["delta"] == pytest.approx(expected, abs=1e-6)
        assert out[metric]["ci95"][0] <= out[metric]["delta"] <= out[metric]["ci95"][1]


@pytest.mark.parametrize("run, reference, task, message", [
    ({"accuracy": 0.5}, result("ab", accuracy=[1, 0]), "mc:x", "run result has no per-item data"),
    (result("ab", accuracy=[1, 0]), {"item_ids": ["a", "b"]}, "mc:x", "reference result has no per-item data"),
    (result("ab", accuracy=[1, 0]), result("abc", accuracy=[1, 0, 1]), "mc:x", "2 in the run, 3 in the reference"),
    (result("ab", accuracy=[1, 0]), result("ac", accuracy=[1, 0]), "mc:x", "item 1 is 'b' in the run but 'c'"),
    (result("ab", acc_norm=[1, 0]), result("ab", acc_norm=[1, 0]), "mc:x", "no per-item 'accuracy'"),
    (result("", accuracy=[]), result("", accuracy=[]), "mc:x", "no items"),
    (result("a", x=[1]), result("a", x=[1]), "bleu", "no gain metrics for task 'bleu'"),
])
def test_gains_explain_why_they_cannot_be_computed(run, reference, task, message):
    with pytest.raises(ValueError, match=message):
        gains(run, reference, task)


def test_a_missing_secondary_metric_is_left_out_not_the_task():
    from fatune.eval.stats import gains

    assert set(gains(result("ab", accuracy=[1, 0]), result("ab", accuracy=[0, 0]), "mc:x")) == {"accuracy"}


def test_has_answer_f1_gain_counts_only_answerable_questions_and_old_results_skip_it():
    from fatune.eval.stats import gains

    # Two answerable and two unanswerable questions: the run declines everything (100 on the unanswerable
    # ones, 0 on the others), the reference answers the answerable ones half right and nothing else.
    ids = ["a", "b", "c", "d"]
    run = {"item_ids": ids, "per_item": {"f1": [0, 0, 100, 100], "exact_match": [0, 0, 100, 100],
                                          "answerable": [1, 1, 0, 0]}}
    reference = {"item_ids": ids, "per_item": {"f1": [50, 50, 0, 0], "exact_match": [0, 0, 0, 0],
                                                "answerable": [1, 1, 0, 0]}}
    result = gains(run, reference, "qa:x", resamples=500)
    assert result["f1"]["delta"] == 25.0 and result["has_ans_f1"]["delta"] == -50.0
    del run["per_item"]["answerable"]  # metrics written before the flag existed: the metric is left out
    assert "has_ans_f1" not in gains(run, reference, "qa:x", resamples=100)
