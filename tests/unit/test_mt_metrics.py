"""Corpus chrF, chrF++ and BLEU through sacreBLEU, and the per-sentence statistics the bootstrap sums."""

import numpy as np
import pytest
import sacrebleu

from fatune.eval.mt_metrics import (
    METRICS,
    corpus_score,
    mt_scores,
    score_from_statistics,
    sentence_statistics,
)

HYPOTHESES = ["تهران، پایتخت ایران است.", "من هر روز به مدرسه میروم", "کتاب روی میز است", "هوا سرد بود؟",
              "این یک آزمایش است."]
REFERENCES = ["تهران پایتخت ایران است.", "من هر روز به مدرسه می‌روم.", "کتاب زیر میز است.", "هوا سرد است.",
              "این آزمون است."]


# sacreBLEU's own chrF test cases for its default settings (effective-order smoothing; test/test_chrf.py).
@pytest.mark.parametrize("hypotheses, references, expected", [
    (["a"], ["a"], 100.0),
    ([""], ["reference"], 0.0),
    (["a b c"], ["a b c"], 100.0),
    (["a b c"], ["abc"], 100.0),
    ([""], ["c"], 0.0),
    (["a", "b"], ["a", "c"], 50.0),
    (["aa"], ["ab"], 25.0),
])
def test_chrf_matches_sacrebleu_test_values(hypotheses, references, expected):
    assert corpus_score("chrf", hypotheses, references) == pytest.approx(expected, abs=1e-4)
    assert score_from_statistics("chrf", sentence_statistics("chrf", hypotheses, references)) == pytest.approx(
        expected, abs=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_summed_statistics_reproduce_corpus_score_exactly(metric):
    """The bootstrap's statistic on the full index set is sacreBLEU's corpus score, bit for bit: this
    catches a sacreBLEU release that changes the private methods the bootstrap relies on."""
    rows = sentence_statistics(metric, HYPOTHESES, REFERENCES)
    assert rows.shape[0] == len(HYPOTHESES)
    assert score_from_statistics(metric, rows[np.arange(len(HYPOTHESES))]) == corpus_score(metric, HYPOTHESES,
                                                                                          REFERENCES)


def test_metric_settings_are_sacrebleus():
    refs = [REFERENCES]
    assert corpus_score("chrf", HYPOTHESES, REFERENCES) == sacrebleu.corpus_chrf(HYPOTHESES, refs).score
    assert corpus_score("chrf_plus_plus", HYPOTHESES, REFERENCES) == sacrebleu.corpus_chrf(
        HYPOTHESES, refs, word_order=2).score
    assert corpus_score("bleu", HYPOTHESES, REFERENCES) == sacrebleu.corpus_bleu(HYPOTHESES, refs,
                                                                               tokenize="intl").score


def test_bleu_splits_persian_punctuation():
    hypothesis, reference = ["تهران ، پایتخت ایران است ؟"], ["تهران، پایتخت ایران است؟"]
    assert corpus_score("bleu", hypothesis, reference) == pytest.approx(100.0)
    # With sacreBLEU's default 13a tokenizer "تهران،" and "است؟" stay single tokens, matching nothing.
    assert sacrebleu.corpus_bleu(hypothesis, [reference]).score < 60


def test_mt_scores():
    scores = mt_scores(HYPOTHESES, REFERENCES)
    assert scores["n"] == 5
    for metric in METRICS:
        assert scores[metric] == round(corpus_score(metric, HYPOTHESES, REFERENCES), 2)
        assert len(scores["per_item"][f"{metric}_stats"]) == 5
    low, high = scores["chrf_ci95"]
    assert 0 <= low <= scores["chrf"] <= high <= 100
    assert scores["per_item"]["chrf"] == [round(sacrebleu.sentence_chrf(h, [r]).score, 2)
                                          for h, r in zip(HYPOTHESES, REFERENCES)]
    assert "tok:intl" in scores["signatures"]["bleu"] and "nw:2" in scores["signatures"]["chrf_plus_plus"]
    assert mt_scores(HYPOTHESES, REFERENCES) == scores  # seeded


def test_perfect_translations_and_bad_input():
    scores = mt_scores(REFERENCES, REFERENCES)
    assert scores["chrf"] == scores["chrf_plus_plus"] == scores["bleu"] == 100.0
    assert scores["chrf_ci95"] == [100.0, 100.0]
    with pytest.raises(ValueError):
        mt_scores([], [])
    with pytest.raises(ValueError):
        mt_scores(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        corpus_score("ter", ["a"], ["a"])
