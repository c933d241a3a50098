"""Corpus chrF, chrF++ and BLEU (sacreBLEU, 0-100) with bootstrap intervals on the corpus metric itself.

chrF is the headline for Persian: it scores character n-grams, so a right stem with a different suffix
or a word written with or without its ZWNJ still earns most of the credit, where word-level BLEU gives
none. chrF++ adds word uni- and bigrams; BLEU is reported because readers expect it.

BLEU uses sacreBLEU's ``intl`` tokenizer rather than its default ``13a``: ``13a`` splits only ASCII
punctuation, so ``ایران،`` and ``ایران؟`` stay single tokens that never match ``ایران`` (checked with
sacreBLEU 2.6), while ``intl`` splits every Unicode punctuation mark, Persian ``، ؛ ؟ « »`` included. The
``flores200`` SentencePiece tokenizer would be the spBLEU convention, but it downloads its model on
first use, and evaluation must work offline. The signature (``signatures``) records the choice.

Texts are scored as given: no Persian normalisation, so the scores are sacreBLEU's own.

Intervals and paired gains resample sentences and recompute the *corpus* score from the summed
per-sentence sufficient statistics (n-gram counts), which is what sacreBLEU's own paired bootstrap
does (``sacrebleu.significance``); the mean of sentence-level chrF would be a different metric. The
statistics are stored per item (``per_item["chrf_stats"]`` ...), so ``stats.gains`` needs no texts.
That uses two private sacreBLEU methods (``_extract_corpus_statistics``, ``_compute_score_from_stats``);
a test checks that the statistics summed over all sentences reproduce ``corpus_score`` exactly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fatune.eval.stats import bootstrap_ci

METRICS = ("chrf", "chrf_plus_plus", "bleu")
BLEU_TOKENIZE = "intl"


def metric(name: str):
    """A fresh sacreBLEU metric object for ``name`` (``chrf``, ``chrf_plus_plus`` or ``bleu``)."""
    from sacrebleu.metrics import BLEU, CHRF

    if name == "chrf":
        return CHRF()
    if name == "chrf_plus_plus":
        return CHRF(word_order=2)
    if name == "bleu":
        return BLEU(tokenize=BLEU_TOKENIZE)
    raise ValueError(f"unknown MT metric {name!r}; choose from {', '.join(METRICS)}")


_CACHE: dict[str, object] = {}


def _cached(name: str):
    # Scoring from statistics keeps no state, so one object per metric serves every resample.
    if name not in _CACHE:
        _CACHE[name] = metric(name)
    return _CACHE[name]


def sentence_statistics(name: str, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-sentence sufficient statistics, one row per sentence (int64)."""
    rows = _cached(name)._extract_corpus_statistics(list(hypotheses), [list(references)])
    return np.asarray(rows, dtype=np.int64).reshape(len(hypotheses), -1)


def score_from_statistics(name: str, statistics: np.ndarray) -> float:
    """The corpus score (0-100) of the sentences whose statistic rows are given (repeats count twice)."""
    totals = np.asarray(statistics, dtype=np.int64).sum(axis=0)
    return float(_cached(name)._compute_score_from_stats([int(v) for v in totals]).score)


def corpus_score(name: str, hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacreBLEU's ``corpus_score`` with one reference per sentence, 0-100."""
    return float(metric(name).corpus_score(list(hypotheses), [list(references)]).score)


def signature(name: str) -> str:
    """sacreBLEU's signature string for the metric with one reference (``nrefs:1|case:mixed|...``)."""
    scorer = metric(name)
    scorer.corpus_score(["a"], [["a"]])  # the signature needs the number of references, known after scoring
    return str(scorer.get_signature())


def mt_scores(hypotheses: Sequence[str], references: Sequence[str], resamples: int = 2000, seed: int = 0) -> dict:
    """Corpus chrF (with its bootstrap ``chrf_ci95``), chrF++ and BLEU of ``hypotheses`` against one
    reference each, all 0-100, and per item: sentence chrF (``per_item["chrf"]``) and each metric's
    sufficient statistics (``per_item["<metric>_stats"]``), from which ``stats.gains`` recomputes corpus
    scores for resampled sets."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        raise ValueError("no sentences to score")
    statistics = {name: sentence_statistics(name, hypotheses, references) for name in METRICS}
    scores = {name: round(score_from_statistics(name, rows), 2) for name, rows in statistics.items()}
    chrf_rows = statistics["chrf"]
    low, high = bootstrap_ci(len(chrf_rows), lambda rows: score_from_statistics("chrf", chrf_rows[rows]),
                             resamples, seed)
    sentence_chrf = [round(score_from_statistics("chrf", row[None]), 2) for row in chrf_rows]
    per_item = {"chrf": sentence_chrf, **{f"{name}_stats": rows.tolist() for name, rows in statistics.items()}}
    return {"chrf": scores["chrf"], "chrf_ci95": [round(low, 2), round(high, 2)],
            "chrf_plus_plus": scores["chrf_plus_plus"], "bleu": scores["bleu"], "n": len(hypotheses),
            "signatures": {name: signature(name) for name in METRICS}, "per_item": per_item}
