"""``fatune compare``: gains over a reference with paired bootstrap CIs, the scores, the seed's comparison
table, charts and side-by-side answers, generated from data.

For each run or model it reads ``RUN/eval/metrics.json`` (or a precomputed metrics file); then every
target is evaluated on the tasks another target has and it lacks, with the same task spec and settings
(``report_fill``), so each gain compares like with like. A target with no metrics at all gets ``loss``
(runs; a base model scores a run's validation split) and ``fidelity`` at the given limit. The reference
and the gains come from ``gains``. A metric that cannot be computed shows ``n/a`` with the reason; the
report is always written.

Output in ``DIR``: ``report.md`` and ``report.html`` (self-contained), ``report.json``
(``{"reference", "gains": {NAME: {"TASK/METRIC": {"delta", "ci95", "significant", "higher_is_better"}}},
"rows": [{column: cell}], "errors": {"evaluation": {NAME: {TASK: why}}, "gains": {NAME: {TASK: why}}}}``),
the two PNG charts, and ``metrics/NAME.json`` for base models evaluated here (reused next time).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fatune.eval import gains as gain_table
from fatune.eval.report_fill import fill, store_path
from fatune.eval.report_render import answers, charts, markdown, page, score_text
from fatune.eval.run import run_dir_of

log = logging.getLogger(__name__)

# Each task kind's headline metric in the scores table and the quality chart (lower is better for loss).
HEADLINE = {"loss": "bits_per_byte", "fidelity": "clean_persian_rate", "farstail": "accuracy", "mc": "accuracy",
            "sib200": "accuracy", "qa": "f1", "translate": "chrf"}
GAINS_NOTE = ("Run minus reference on the same items [95% paired bootstrap CI]. In bold, ▲ significantly better and "
              "▼ significantly worse (the CI excludes 0); ↓ marks metrics where lower is better.")


def _names(targets: list[str], runs: list) -> list[str]:
    """A run's folder name, a base model's id; the full target where two would read the same."""
    names = [run.name if run else target for target, run in zip(targets, runs)]
    return [target if names.count(name) > 1 else name for name, target in zip(names, targets)]


def _read(path: Path | None) -> dict:
    return json.loads(path.read_text()) if path and path.exists() else {}


def _entry(target: str, name: str, run_dir: Path | None, out: Path, metrics_file: Path | None = None) -> dict:
    entry = {"name": name, "target": target, "run": run_dir, "errors": {}}
    entry["summary"] = _read(run_dir / "train_summary.json" if run_dir else None)
    kept = run_dir / "eval" / "metrics.json" if run_dir else store_path(out, name)  # where fills are written
    metrics = _read(metrics_file or kept)
    if metrics_file and Path(metrics_file) != kept:  # what an earlier compare filled in, under the given file
        extra = _read(kept)
        filled = (extra.get("_meta") or {}).get("filled") or {}
        for task in set(filled) - set(metrics):
            metrics[task] = extra[task]
            metrics.setdefault("_meta", {}).setdefault("filled", {})[task] = filled[task]
    entry["metrics"] = metrics
    return entry


def _value(entry: dict, task: str, key: str, fmt: str = "{:.3f}"):
    values = entry["metrics"].get(task)
    if values and "skipped" in values:
        return f"n/a (skipped: {values['skipped'][:80]})"
    if not values or values.get(key) is None:
        reason = entry["errors"].get(task) or ("not computed" if task != "loss" or entry["run"] else "base model: no run")
        return f"n/a ({reason[:80]})"
    return fmt.format(values[key])


def _headlines(entries: list[dict]) -> dict[str, str]:
    """``{task: headline metric}`` for every task some entry has, in report order."""
    tasks = {t for e in entries for t, v in e["metrics"].items() if t != "_meta" and isinstance(v, dict)}
    return {t: HEADLINE[gain_table.kind_of(t)] for t in sorted(tasks, key=gain_table.task_order)
            if gain_table.kind_of(t) in HEADLINE}


def _scores(entries: list[dict], headline: dict) -> tuple[list[str], list[list[str]]]:
    header = ["name", *(f"{t} {m.replace('_', ' ')}" + (" ↓" if t == "loss" else "") for t, m in headline.items())]
    rows = []
    for e in entries:
        cells = [e["name"]]
        for task, metric in headline.items():
            values = e["metrics"].get(task) or {}
            scored = values.get(metric) is not None
            cells.append(score_text(task, metric, values) if scored else _value(e, task, metric))
        rows.append(cells)
    return header, rows


def _table(entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    # Accuracy columns only for the choice tasks some target has: a column of "n/a" for a task nobody
    # evaluated (the demo has no FarsTail) reads as a failure.
    choice_tasks = (["farstail"] if any("farstail" in e["metrics"] for e in entries) else []) + sorted(
        {task for e in entries for task in e["metrics"] if task.startswith("mc:")})
    header = ["name", "method", "base model", "trainable / total params", "data used", "train time", "hardware",
              "tokens/s", "peak memory", "val loss", "bits/byte", "Persian (clean)", "Persian share",
              *[("FarsTail" if t == "farstail" else t) + " acc" for t in choice_tasks]]
    rows = []
    for e in entries:
        s = e["summary"]
        params = f"{s['trainable_params']:,} / {s['total_params']:,}" if s else "n/a (not trained here)"
        rows.append([
            e["name"], s.get("method", e["metrics"].get("_meta", {}).get("method") or "base"),
            s.get("base_model", e["target"]), params,
            f"{s['train_examples']} conv." if s else "n/a", f"{s['train_seconds']:.0f} s" if s else "n/a",
            f"{s['device']} x{s['world_size']}" if s else "n/a", f"{s['tokens_per_second']:.0f}" if s else "n/a",
            f"{s['peak_memory_bytes'] / 2**30:.1f} GiB" if s else "n/a",
            _value(e, "loss", "loss"), _value(e, "loss", "bits_per_byte"),
            _value(e, "fidelity", "clean_persian_rate"), _value(e, "fidelity", "persian_share"),
            *[_value(e, t, "accuracy") for t in choice_tasks]])
    return header, rows


def compare(targets: list[str], out: str | Path, limit: int = 8, max_new_tokens: int = 96,
            precomputed: dict[str, Path] | None = None, reference: str | None = None) -> Path:
    """Write the comparison report for ``targets`` (run dirs, model dirs or ids) into ``out``.
    ``precomputed`` maps a target to a metrics JSON already written for it (e.g. a base model's);
    ``reference`` names the target gains are measured against (name or path; default: the base model,
    else the first target)."""
    out = Path(out)
    runs = [run_dir_of(t) for t in targets]
    names = _names(targets, runs)
    ref = gain_table.reference_index(targets, names, runs, reference)  # a bad --reference fails before any work
    out.mkdir(parents=True, exist_ok=True)
    entries = [_entry(t, n, r, out, (precomputed or {}).get(t)) for t, n, r in zip(targets, names, runs)]
    fill(entries, ref, out, limit, max_new_tokens)
    table, gain_errors = gain_table.gains_table(entries, ref)
    gains_header, gains_rows = gain_table.rows(entries, ref, table, gain_errors)
    headline = _headlines(entries)
    scores_header, scores_rows = _scores(entries, headline)
    header, rows = _table(entries)
    only_one = "Only one target: nothing to compare with the reference." if len(entries) < 2 else ""
    sections = [
        {"title": f"Gains over {names[ref]}", "header": gains_header, "rows": gains_rows,
         "note": only_one or GAINS_NOTE},
        {"title": "Scores", "header": scores_header, "rows": scores_rows,
         "note": "Headline metric per task [95% bootstrap CI]; ↓ lower is better."},
        {"title": "Runs", "header": header, "rows": rows},
    ]
    side = answers(entries)
    images = charts(entries, headline, out)
    report = {"reference": names[ref], "gains": table,
              "rows": [dict(zip(header, row)) | dict(zip(scores_header, score_row))
                       for row, score_row in zip(rows, scores_rows)],
              "errors": {"evaluation": {e["name"]: e["errors"] for e in entries if e["errors"]}, "gains": gain_errors}}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "report.md").write_text(markdown(sections, entries, side), encoding="utf-8")
    (out / "report.html").write_text(page(sections, entries, side, images), encoding="utf-8")
    return out / "report.html"
