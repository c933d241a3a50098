"""Seeded percentile bootstrap: confidence intervals for task metrics and paired gains between two models.

Every function resamples *item indices*, not values, so one statistic can be a mean of per-item scores
(accuracy, F1), a ratio of sums (bits per byte) or a corpus metric recomputed from summed per-sentence
statistics (chrF, BLEU): whatever the task reports as its headline. ``paired_bootstrap`` draws one index
matrix and applies it to both models, so an item that is hard for both cancels out of the difference;
that is what makes a gain of a couple of points on a few hundred items detectable at all.

The seed is fixed (0 by default): the same results files always give the same intervals in a report.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

Statistic = Callable[[np.ndarray], float]

# Task kind -> the metrics a report compares, and whether higher is better. Each needs per-item data in
# the task's result (``per_item``), see ``_statistic``.
GAIN_METRICS: dict[str, list[tuple[str, bool]]] = {
    # has_ans_f1: F1 on the answerable questions alone, so a model that learns to decline everything
    # (the fixed no-answer sentence scores 100 on unanswerable questions) cannot pass for a reader.
    "qa": [("f1", True), ("exact_match", True), ("has_ans_f1", True)],
    "translate": [("chrf", True), ("chrf_plus_plus", True), ("bleu", True)],
    "sib200": [("accuracy", True), ("acc_norm", True)],
    "farstail": [("accuracy", True), ("acc_norm", True)],
    "mc": [("accuracy", True), ("acc_norm", True)],
    "fidelity": [("clean_persian_rate", True), ("degenerate_rate", False), ("hit_limit_rate", False),
                 ("echo_rate", False)],
    "loss": [("bits_per_byte", False)],
}


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    if n < 1:
        raise ValueError("the bootstrap needs at least one item")
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(values: Sequence[float], level: float) -> list[float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.asarray(values, dtype=float), [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_ci(n: int, statistic: Statistic, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> list[float]:
    """Percentile interval of ``statistic(indices)`` over ``resamples`` draws of ``n`` indices with replacement.

    ``statistic`` receives an integer array of length ``n`` (which items, repeats included) and returns
    the metric computed on those items."""
    return _percentiles([statistic(row) for row in _indices(n, resamples, seed)], level)


def mean_ci(values: Sequence[float], resamples: int = 2000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Bootstrap interval of the mean of ``values`` (vectorised: one gather for all resamples)."""
    array = np.asarray(values, dtype=float)
    return _percentiles(array[_indices(len(array), resamples, seed)].mean(axis=1), level)


def paired_bootstrap(n: int, statistic_a: Statistic, statistic_b: Statistic, resamples: int = 2000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, list[float]]:
    """``statistic_a - statistic_b`` on all items, and its percentile interval with both statistics
    computed on the *same* resampled indices each time (a paired test: items are matched)."""
    everything = np.arange(n)
    delta = statistic_a(everything) - statistic_b(everything)
    deltas = [statistic_a(row) - statistic_b(row) for row in _indices(n, resamples, seed)]
    return float(delta), _percentiles(deltas, level)


def task_kind(task_key: str) -> str:
    """The task's kind from its results key: ``"qa:pquad"`` -> ``"qa"``, ``"loss"`` -> ``"loss"``."""
    return task_key.partition(":")[0]


def _per_item(result: dict, side: str) -> tuple[list[str], dict]:
    ids, per_item = result.get("item_ids"), result.get("per_item")
    if not isinstance(ids, list) or not isinstance(per_item, dict):
        raise ValueError(f"the {side} result has no per-item data (item_ids and per_item); re-run fatune eval "
                         "with this version to record it")
    return ids, per_item


def _statistic(kind: str, metric: str, per_item: dict, side: str) -> Statistic:
    """The headline metric recomputed on a subset of items (given as an index array)."""
    def need(key: str) -> np.ndarray:
        if key not in per_item:
            raise ValueError(f"the {side} result has no per-item {key!r}, needed for {metric}")
        return np.asarray(per_item[key], dtype=float)

    if kind == "translate":  # corpus chrF / BLEU from summed per-sentence statistics, not a mean of sentences
        from fatune.eval.mt_metrics import score_from_statistics

        stats = need(f"{metric}_stats")
        return lambda rows: score_from_statistics(metric, stats[rows])
    if kind == "loss":  # bits per byte is a ratio of sums: long rows weigh more, as in the headline
        nll, n_bytes = need("nll"), need("bytes")
        return lambda rows: float(nll[rows].sum() / math.log(2) / max(n_bytes[rows].sum(), 1.0))
    if kind == "qa" and metric == "has_ans_f1":  # the mean over the answerable items drawn
        f1, answerable = need("f1"), need("answerable") > 0
        return lambda rows: float(f1[rows][answerable[rows]].mean()) if answerable[rows].any() else 0.0
    # Means of per-item values; fidelity stores its flags without the "_rate" suffix (clean_persian, ...).
    values = need(metric if metric in per_item else metric.removesuffix("_rate"))
    return lambda rows: float(values[rows].mean())


def _check_same_items(run_ids: list[str], reference_ids: list[str]) -> None:
    if run_ids == reference_ids:
        return
    if len(run_ids) != len(reference_ids):
        raise ValueError(f"the results cover different items: {len(run_ids)} in the run, {len(reference_ids)} in "
                         "the reference (a different --limit or task file?)")
    first = next(i for i, (a, b) in enumerate(zip(run_ids, reference_ids)) if a != b)
    raise ValueError(f"the results cover different items: item {first} is {run_ids[first]!r} in the run but "
                     f"{reference_ids[first]!r} in the reference")


def gains(run_result: dict, reference_result: dict, task_key: str, resamples: int = 2000,
          seed: int = 0) -> dict[str, dict]:
    """Paired gains of one task's result over a reference result (e.g. a fine-tuned run over its base).

    Returns ``{metric: {"delta", "ci95", "significant", "higher_is_better"}}`` for the metrics of
    ``GAIN_METRICS[task_kind(task_key)]``: ``delta`` is run minus reference on the metric's own scale,
    ``ci95`` its paired percentile bootstrap interval, ``significant`` whether that interval excludes 0
    (an improvement is a positive delta when ``higher_is_better``, a negative one otherwise).
    Raises ``ValueError`` when either result lacks per-item data or the two cover different items."""
    kind = task_kind(task_key)
    if kind not in GAIN_METRICS:
        raise ValueError(f"no gain metrics for task {task_key!r}; known kinds: {', '.join(GAIN_METRICS)}")
    run_ids, run_items = _per_item(run_result, "run")
    reference_ids, reference_items = _per_item(reference_result, "reference")
    _check_same_items(run_ids, reference_ids)
    if not run_ids:
        raise ValueError(f"{task_key}: no items to compare")
    out = {}
    for position, (metric, higher_is_better) in enumerate(GAIN_METRICS[kind]):
        try:
            statistics = (_statistic(kind, metric, run_items, "run"),
                          _statistic(kind, metric, reference_items, "reference"))
        except ValueError:
            if position == 0:  # the headline metric must be there; secondary ones may predate their data
                raise
            continue
        delta, (low, high) = paired_bootstrap(len(run_ids), *statistics, resamples, seed)
        out[metric] = {"delta": round(delta, 6), "ci95": [round(low, 6), round(high, 6)],
                       "significant": bool(low > 0 or high < 0), "higher_is_better": higher_is_better}
    return out
