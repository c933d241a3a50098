"""Gains over a reference for ``fatune compare``: which target is the reference, each other target's
paired-bootstrap gain on every task both have (``fatune.eval.stats.gains``), and how numbers are written.

The reference is the target named by ``--reference`` (its name or path), else the first target that is
not a fatune run (the base model: "before" vs "after"), else the first target. Gains are ``run -
reference`` on the same items; a gain is significant when its 95% CI excludes 0, and better or worse
by the metric's direction (``higher_is_better``). Scores on a 0-100 scale (F1, EM, chrF, BLEU) are
written with one decimal, 0-1 ones (accuracy, rates) with three.
"""

from __future__ import annotations

from pathlib import Path

from fatune.errors import FatuneError
from fatune.eval import stats
from fatune.eval.run import run_dir_of

# 0-100 scores; everything else (accuracy, rates, shares, bits per byte) is written with three decimals.
PERCENT_METRICS = {"f1", "exact_match", "chrf", "chrf_plus_plus", "bleu"}
PERCENT_KINDS = ("qa", "translate")
# Task order in tables: loss first, then Persian fidelity, then the benchmarks.
KIND_ORDER = ("loss", "fidelity", "farstail", "mc", "sib200", "qa", "translate")


def kind_of(task: str) -> str:
    return stats.task_kind(task)


def task_order(task: str) -> tuple:
    kind = kind_of(task)
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), task)


def is_percent(task: str, metric: str) -> bool:
    return kind_of(task) in PERCENT_KINDS and metric.lower() in PERCENT_METRICS


def fmt(task: str, metric: str, value, signed: bool = False) -> str:
    """A value in its metric's scale: ``32.1`` (0-100 scores) or ``0.760`` (0-1)."""
    if value is None:
        return "n/a"
    spec = ("{:+.1f}" if signed else "{:.1f}") if is_percent(task, metric) else ("{:+.3f}" if signed else "{:.3f}")
    return spec.format(value)


def with_ci(task: str, metric: str, value, ci, signed: bool = False) -> str:
    """``0.760 [0.697, 0.813]``; the value alone where there is no CI."""
    text = fmt(task, metric, value, signed)
    if ci and len(ci) == 2 and None not in ci:
        text += f" [{fmt(task, metric, ci[0])}, {fmt(task, metric, ci[1])}]"
    return text


def reference_index(targets: list[str], names: list[str], runs: list, reference: str | None = None) -> int:
    """Index of the reference target (see the module docstring); a ``reference`` naming none is an error."""
    if reference:
        wanted, wanted_run = Path(reference).expanduser(), run_dir_of(reference)
        for i, (target, name) in enumerate(zip(targets, names)):
            same_path = wanted.exists() and Path(target).exists() and wanted.resolve() == Path(target).resolve()
            same_run = None not in (runs[i], wanted_run) and Path(wanted_run).resolve() == Path(runs[i]).resolve()
            if reference in (target, name) or same_path or same_run:
                return i
        raise FatuneError(f"--reference {reference}: not one of the targets ({', '.join(names)})")
    return next((i for i, run in enumerate(runs) if run is None), 0)


def gains_table(entries: list[dict], reference: int, resamples: int = 2000, seed: int = 0) -> tuple[dict, dict]:
    """``({NAME: {"TASK/METRIC": gain}}, {NAME: {TASK: why there is no gain}})`` for every non-reference
    entry and every task it shares with the reference."""
    ref = entries[reference]["metrics"]
    table: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    for i, entry in enumerate(entries):
        if i == reference:
            continue
        row = table.setdefault(entry["name"], {})
        for task in sorted(set(entry["metrics"]) & set(ref), key=task_order):
            if task == "_meta" or not stats.GAIN_METRICS.get(stats.task_kind(task)):
                continue
            mine, theirs = entry["metrics"][task], ref[task]
            if not (isinstance(mine, dict) and isinstance(theirs, dict)) or "skipped" in mine or "skipped" in theirs:
                continue
            try:
                result = stats.gains(mine, theirs, task, resamples=resamples, seed=seed)
            except ValueError as error:  # different items, no per-item data: said in the table
                errors.setdefault(entry["name"], {})[task] = str(error)
                continue
            except Exception as error:  # malformed results must not cost the whole report
                errors.setdefault(entry["name"], {})[task] = f"{type(error).__name__}: {error}"
                continue
            for metric, _ in stats.GAIN_METRICS[stats.task_kind(task)]:
                if metric in result:
                    row[f"{task}/{metric}"] = {k: result[metric][k]
                                               for k in ("delta", "ci95", "significant", "higher_is_better")}
    return table, errors


def columns(entries: list[dict], reference: int) -> list[str]:
    """The gains table's ``TASK/METRIC`` columns: every task with gain metrics that the reference or a run
    has, in report order, its metrics in ``GAIN_METRICS`` order."""
    tasks = {task for entry in entries for task, value in entry["metrics"].items()
             if task != "_meta" and isinstance(value, dict) and "skipped" not in value}
    if len(entries) < 2:
        return []
    return [f"{task}/{metric}" for task in sorted(tasks, key=task_order)
            for metric, _ in stats.GAIN_METRICS.get(stats.task_kind(task), [])]


def rows(entries: list[dict], reference: int, table: dict, errors: dict) -> tuple[list[str], list[list[tuple]]]:
    """Header and rows (one per non-reference entry) of ``(text, mark)`` cells, ``mark`` from ``direction``;
    a missing gain says why."""
    ref = entries[reference]
    cols = columns(entries, reference)
    higher = {f"{task}/{m}": hib for task in {c.rpartition("/")[0] for c in cols}
              for m, hib in stats.GAIN_METRICS[stats.task_kind(task)]}
    out = []
    for i, entry in enumerate(entries):
        if i == reference:
            continue
        cells = [(entry["name"], "")]
        for column in cols:
            task = column.rpartition("/")[0]
            gain = table.get(entry["name"], {}).get(column)
            if gain:
                cells.append((gain_text(column, gain), direction(gain)))
                continue
            why = (errors.get(entry["name"], {}).get(task) or _absent(entry, task, "")
                   or _absent(ref, task, "reference: ") or "not compared")
            cells.append((f"n/a ({why[:80]})", ""))
        out.append(cells)
    return ["run", *(header(c, higher[c]) for c in cols)], out


def _absent(entry: dict, task: str, prefix: str) -> str | None:
    value = entry["metrics"].get(task)
    if isinstance(value, dict) and "skipped" in value:
        return f"{prefix}skipped: {value['skipped']}"
    if value is None:
        return prefix + (entry["errors"].get(task) or "not computed")
    return None


def header(column: str, higher_is_better: bool) -> str:
    """``qa:pquad f1``; ``fidelity degenerate rate ↓`` for a lower-is-better metric."""
    task, _, metric = column.rpartition("/")
    return f"{task} {metric.replace('_', ' ')}" + ("" if higher_is_better else " ↓")


def direction(gain: dict) -> str:
    """``better`` / ``worse`` for a significant gain, else ``""``."""
    if not gain["significant"]:
        return ""
    return "better" if (gain["delta"] > 0) == gain["higher_is_better"] else "worse"


def gain_text(column: str, gain: dict) -> str:
    """``▲ +32.1 [24.0, 40.2]`` (significantly better), ``▼ ...`` (worse), or the plain delta and CI."""
    task, _, metric = column.rpartition("/")
    text = with_ci(task, metric, gain["delta"], gain["ci95"], signed=True)
    return {"better": "▲ ", "worse": "▼ "}.get(direction(gain), "") + text
