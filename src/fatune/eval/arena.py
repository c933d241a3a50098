"""The arena leaderboard: Bradley-Terry ratings from blind pairwise votes, with bootstrap intervals.

Each vote is a battle between its two models. A win counts 1 for the winner; ``tie`` and ``both_bad``
each count half a win for each side (Chatbot Arena also treats both-bad as a tie). Strengths ``beta``
maximise the Bradley-Terry likelihood, ``P(i beats j) = 1 / (1 + exp(beta_j - beta_i))``, with a small
Gaussian prior (an L2 penalty ``prior/2 * sum(beta**2)``) that keeps the fit finite for a model that
never lost or never won. Ratings are reported on Chatbot Arena's Elo-like scale,
``1000 + 400 * beta / ln(10)`` with betas centred to mean 0, so a 400-point gap means 10:1 odds.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np

from fatune.errors import FatuneError
from fatune.eval.votes import read_votes

ELO_SCALE = 400 / math.log(10)
ELO_CENTER = 1000.0
_SCORE = {"left": 1.0, "right": 0.0, "tie": 0.5, "both_bad": 0.5}  # the left model's share of the win


def _log_p_win(beta: np.ndarray) -> np.ndarray:
    """``log P(i beats j)`` for every pair, ``-log(1 + exp(beta_j - beta_i))``, without overflow."""
    return -np.logaddexp(0.0, beta[None, :] - beta[:, None])


def _battles(votes: Sequence[dict]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``(models, left, right, left_score)``: models sorted by name, and per vote the indices of its two
    models and the left model's share of the win."""
    models = sorted({model for vote in votes for model in vote["models"]})
    index = {model: i for i, model in enumerate(models)}
    left, right, score = [], [], []
    for vote in votes:
        if vote.get("winner") not in _SCORE:
            raise FatuneError(f"winner must be one of {', '.join(_SCORE)}; got {vote.get('winner')!r} (winner)")
        left.append(index[vote["models"][0]])
        right.append(index[vote["models"][1]])
        score.append(_SCORE[vote["winner"]])
    return models, np.array(left, dtype=np.intp), np.array(right, dtype=np.intp), np.array(score)


def _score_matrix(n_models: int, left: np.ndarray, right: np.ndarray, score: np.ndarray,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """``S[i, j]``: the wins of model i over model j (ties as halves), each vote counted ``weights`` times.
    Battles between i and j are ``S + S.T``."""
    weights = np.ones(len(score)) if weights is None else weights
    size = n_models * n_models
    won = np.bincount(left * n_models + right, weights=weights * score, minlength=size)
    lost = np.bincount(right * n_models + left, weights=weights * (1 - score), minlength=size)
    return (won + lost).reshape(n_models, n_models)


def _fit_betas(wins: np.ndarray, prior: float, start: np.ndarray | None = None) -> np.ndarray:
    """Penalised maximum-likelihood betas for the score matrix ``wins``, centred to mean 0.

    Newton's method with backtracking: the objective is strictly convex (``prior > 0``), so this is
    deterministic and converges in a handful of steps even when a model never lost."""
    n_models = len(wins)
    battles = wins + wins.T

    def objective(beta: np.ndarray) -> float:
        return float(-(wins * _log_p_win(beta)).sum() + prior / 2 * beta @ beta)

    beta = np.zeros(n_models) if start is None else start.astype(float)
    value = objective(beta)
    for _ in range(200):
        p_win = np.exp(_log_p_win(beta))
        gradient = -(wins - battles * p_win).sum(axis=1) + prior * beta
        if np.abs(gradient).max() < 1e-9:
            break
        curvature = battles * p_win * (1 - p_win)
        hessian = np.diag(curvature.sum(axis=1) + prior) - curvature
        step = np.linalg.solve(hessian, gradient)
        if np.abs(step).max() < 1e-12:  # converged to float precision (the gradient scales with votes)
            break
        decrease = gradient @ step  # > 0: the Hessian is positive definite
        size = 1.0
        while size > 1e-10:
            candidate = beta - size * step
            candidate_value = objective(candidate)
            if candidate_value <= value - 1e-4 * size * decrease:
                break
            size /= 2
        else:
            break  # no further decrease representable in floating point: at the optimum
        beta, value = candidate, candidate_value
    return beta - beta.mean()


def _to_rating(beta: np.ndarray) -> np.ndarray:
    return ELO_CENTER + ELO_SCALE * beta


def _check_prior(prior: float) -> None:
    if not prior > 0:
        raise FatuneError(f"prior must be > 0 (it keeps ratings finite for a model that never lost); got {prior}")


def fit_bradley_terry(votes: Sequence[dict], prior: float = 1.0) -> dict[str, float]:
    """``{model: rating}`` on the Elo-like scale, best first; every model in ``votes`` gets one.

    ``tie`` and ``both_bad`` count half a win for each side. ``prior`` is the precision of the Gaussian
    prior on the betas (natural-log units); no votes give ``{}``."""
    _check_prior(prior)
    if not votes:
        return {}
    models, left, right, score = _battles(votes)
    ratings = _to_rating(_fit_betas(_score_matrix(len(models), left, right, score), prior))
    order = sorted(range(len(models)), key=lambda i: (-ratings[i], models[i]))
    return {models[i]: float(ratings[i]) for i in order}


def bootstrap_ratings(votes: Sequence[dict], bootstrap: int = 1000, seed: int = 0,
                      prior: float = 1.0) -> tuple[list[str], np.ndarray]:
    """``(models, ratings)``: models sorted by name, and a ``(bootstrap, len(models))`` array of the
    ratings refitted on ``bootstrap`` resamples of the votes (with replacement, seeded by ``seed``).

    A model missing from a resample keeps a rating there, from the prior alone."""
    _check_prior(prior)
    models, left, right, score = _battles(votes)
    rng = np.random.default_rng(seed)
    full = _fit_betas(_score_matrix(len(models), left, right, score), prior)
    samples = np.empty((bootstrap, len(models)))
    for k in range(bootstrap):
        counts = np.bincount(rng.integers(0, len(votes), len(votes)), minlength=len(votes)).astype(float)
        wins = _score_matrix(len(models), left, right, score, counts)
        samples[k] = _to_rating(_fit_betas(wins, prior, start=full))  # warm start: fewer Newton steps
    return models, samples


def leaderboard(votes: Sequence[dict], bootstrap: int = 1000, seed: int = 0, prior: float = 1.0) -> dict:
    """Ratings with 95 % bootstrap intervals, vote counts and head-to-head win rates.

    Returns ``{"ratings": {MODEL: {"rating", "ci95": [low, high], "votes"}}`` (best first),
    ``"win_rate": {A: {B: rate or None}}`` (A's wins over B plus half their ties, per battle; None when
    they never met), ``"votes"`` (total) and ``"ties"`` (tie and both_bad votes). With ``bootstrap=0``
    ``ci95`` is None."""
    if not votes:
        raise FatuneError("no votes to rank")
    ratings = fit_bradley_terry(votes, prior)
    models, left, right, score = _battles(votes)
    index = {model: i for i, model in enumerate(models)}
    wins = _score_matrix(len(models), left, right, score)
    battles = wins + wins.T
    intervals = None
    if bootstrap > 0:
        _, samples = bootstrap_ratings(votes, bootstrap, seed, prior)
        intervals = np.percentile(samples, [2.5, 97.5], axis=0)
    table = {}
    for model, rating in ratings.items():
        i = index[model]
        table[model] = {"rating": rating,
                        "ci95": None if intervals is None else [float(intervals[0, i]), float(intervals[1, i])],
                        "votes": int(np.count_nonzero(left == i) + np.count_nonzero(right == i))}
    win_rate = {a: {b: (float(wins[index[a], index[b]] / battles[index[a], index[b]])
                        if battles[index[a], index[b]] else None)
                    for b in ratings if b != a}
                for a in ratings}
    return {"ratings": table, "win_rate": win_rate, "votes": len(votes),
            "ties": int(np.count_nonzero(score == 0.5))}


def _write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Run ``write(binary_handle)`` on a temporary file next to ``path``, then rename it over ``path``, so
    readers (the web page) never see half a file. A unique temp name lets two writers race safely."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary shared file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def leaderboard_markdown(board: dict, bootstrap: int) -> str:
    """The leaderboard as markdown: the ratings table, the win-rate matrix and how votes count."""
    lines = ["| rank | model | rating | 95 % CI | votes |", "|---:|---|---:|---|---:|"]
    for rank, (model, row) in enumerate(board["ratings"].items(), 1):
        ci = "—" if row["ci95"] is None else f"{row['ci95'][0]:.0f} – {row['ci95'][1]:.0f}"
        lines.append(f"| {rank} | {_cell(model)} | {row['rating']:.0f} | {ci} | {row['votes']} |")
    models = list(board["ratings"])
    lines += ["", "Win rate of the row model against the column model (ties count half):", "",
              "| | " + " | ".join(_cell(m) for m in models) + " |", "|---|" + "---:|" * len(models)]
    for a in models:
        cells = ["—" if a == b or board["win_rate"][a][b] is None else f"{100 * board['win_rate'][a][b]:.0f} %"
                 for b in models]
        lines.append(f"| {_cell(a)} | " + " | ".join(cells) + " |")
    lines += ["", f"{board['votes']} votes, {board['ties']} of them tie or both bad. A tie and a both-bad "
              "vote each count as half a win for each model (as in Chatbot Arena); intervals are the "
              f"2.5th-97.5th percentiles over {bootstrap} bootstrap resamples of the votes."]
    return "\n".join(lines) + "\n"


def _plot(board: dict, handle) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global state, safe inside a threaded server

    models = list(board["ratings"])[::-1]  # best at the top
    ratings = [board["ratings"][m]["rating"] for m in models]
    intervals = [board["ratings"][m]["ci95"] or [r, r] for m, r in zip(models, ratings)]
    errors = [[r - low for r, (low, _) in zip(ratings, intervals)],
              [high - r for r, (_, high) in zip(ratings, intervals)]]
    figure = Figure(figsize=(7, 1.2 + 0.4 * len(models)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.errorbar(ratings, range(len(models)), xerr=errors, fmt="o", capsize=4)
    axes.set_yticks(range(len(models)), models)
    axes.set_xlabel("rating (Elo scale) with 95 % bootstrap interval")
    axes.set_title(f"arena leaderboard ({board['votes']} votes)")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(handle, format="png", dpi=100)


def write_leaderboard(votes_path: str | Path, out_dir: str | Path, bootstrap: int = 1000, seed: int = 0,
                      prior: float = 1.0) -> Path:
    """Write ``leaderboard.json``, ``leaderboard.md`` and ``leaderboard.png`` for ``votes_path`` into
    ``out_dir``, each atomically; return the JSON's path."""
    board = leaderboard(read_votes(votes_path), bootstrap, seed, prior)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
    _write_atomic(out / "leaderboard.json", lambda handle: handle.write(text.encode("utf-8")))
    markdown = leaderboard_markdown(board, bootstrap)
    _write_atomic(out / "leaderboard.md", lambda handle: handle.write(markdown.encode("utf-8")))
    _write_atomic(out / "leaderboard.png", lambda handle: _plot(board, handle))
    return out / "leaderboard.json"
