"""``fatune compare``: the seed's comparison table, charts and side-by-side answers, generated from data.

For each run or model it reads ``RUN/eval/metrics.json``; where that is missing it computes ``loss``
(runs only) and ``fidelity`` with a small limit. A metric that cannot be computed shows ``n/a`` with the
reason; the report is always written. Output: ``DIR/report.md``, ``DIR/report.html`` (self-contained:
images inlined, Persian text in ``dir="rtl"`` blocks, no network needed) and the two PNG charts.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

from fatune.data.script import persian_share
from fatune.eval.run import evaluate, run_dir_of

log = logging.getLogger(__name__)


def _entry(target: str, limit: int, max_new_tokens: int, metrics_file: Path | None = None) -> dict:
    run_dir = run_dir_of(target)
    entry = {"name": Path(target).name if run_dir else target, "target": target, "run": run_dir, "errors": {}}
    summary_file = run_dir / "train_summary.json" if run_dir else None
    entry["summary"] = json.loads(summary_file.read_text()) if summary_file and summary_file.exists() else {}
    metrics_file = metrics_file or (run_dir / "eval" / "metrics.json" if run_dir else None)
    if metrics_file and metrics_file.exists():
        entry["metrics"] = json.loads(metrics_file.read_text())
        return entry
    entry["metrics"] = {}
    for task in (["loss"] if run_dir else []) + ["fidelity"]:
        try:
            entry["metrics"].update(evaluate(target, task, limit=limit, max_new_tokens=max_new_tokens))
        except Exception as error:  # a report with n/a beats no report
            entry["errors"][task] = f"{type(error).__name__}: {error}"
            log.warning("compare: %s: %s failed: %s", target, task, error)
    return entry


def _value(entry: dict, task: str, key: str, fmt: str = "{:.3f}"):
    values = entry["metrics"].get(task)
    if values and "skipped" in values:
        return f"n/a (skipped: {values['skipped'][:80]})"
    if not values or values.get(key) is None:
        reason = entry["errors"].get(task) or ("not computed" if task != "loss" or entry["run"] else "base model: no run")
        return f"n/a ({reason[:80]})"
    return fmt.format(values[key])


def _table(entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    mc_tasks = sorted({task for e in entries for task in e["metrics"] if task.startswith("mc:")})
    header = ["name", "method", "base model", "trainable / total params", "data used", "train time", "hardware",
              "tokens/s", "peak memory", "val loss", "bits/byte", "Persian (clean)", "Persian share",
              "FarsTail acc", *[f"{t} acc" for t in mc_tasks]]
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
            _value(e, "farstail", "accuracy"), *[_value(e, t, "accuracy") for t in mc_tasks]])
    return header, rows


def _charts(entries: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fatune.training.callbacks import read_metrics

    names = [e["name"] for e in entries]
    quality = {"Persian (clean)": ("fidelity", "clean_persian_rate"), "Persian share": ("fidelity", "persian_share"),
               "FarsTail acc": ("farstail", "accuracy")}
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(names) + 3), 4))
    width = 0.8 / len(quality)
    for k, (label, (task, key)) in enumerate(quality.items()):
        values = [(e["metrics"].get(task) or {}).get(key) or 0.0 for e in entries]
        axes.bar([i + k * width for i in range(len(names))], values, width, label=label)
    axes.set_xticks([i + width * (len(quality) - 1) / 2 for i in range(len(names))], names, rotation=15)
    axes.set_ylim(0, 1)
    axes.set_title("quality (higher is better; missing = 0)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / "quality.png", dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(7, 4))
    for e in entries:
        rows = read_metrics(e["run"]) if e["run"] else []
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        val = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        if train:
            line, = axes.plot(*zip(*train), alpha=0.5, label=f"{e['name']} train")
            if val:
                axes.plot(*zip(*val), marker="o", color=line.get_color(), label=f"{e['name']} val")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("loss curves")
    if axes.lines:
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "loss_curves.png", dpi=100)
    plt.close(figure)
    return [out / "quality.png", out / "loss_curves.png"]


def _answers(entries: list[dict]) -> list[dict]:
    """One row per suite prompt: the prompt and every entry's answer."""
    by_entry = [{s["prompt"]: s["answer"] for s in (e["metrics"].get("fidelity") or {}).get("samples", [])}
                for e in entries]
    prompts = list(dict.fromkeys(p for answers in by_entry for p in answers))
    return [{"prompt": p, "answers": [answers.get(p, "n/a") for answers in by_entry]} for p in prompts]


def _md(header, rows, entries, answers) -> str:
    lines = ["# fatune comparison", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    lines += ["", "![quality](quality.png)", "", "![loss curves](loss_curves.png)", "", "## Side-by-side answers", ""]
    for item in answers:
        lines += [f"### {item['prompt']}", ""]
        lines += [f"**{e['name']}**: {a}".replace("\n", " ") + "\n" for e, a in zip(entries, item["answers"])]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    direction = ' dir="rtl"' if persian_share(text) > 0.5 else ""
    return f"<td{direction}>{html.escape(text).replace(chr(10), '<br>')}</td>"


def _html(header, rows, entries, answers, images) -> str:
    inline = "".join(f'<p><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                     "</p>" for p in images)
    table = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
             + "".join("<tr>" + "".join(_cell(str(c)) for c in row) + "</tr>" for row in rows) + "</table>")
    side = ("<table><tr><th>prompt</th>" + "".join(f"<th>{html.escape(e['name'])}</th>" for e in entries) + "</tr>"
            + "".join("<tr>" + _cell(item["prompt"]) + "".join(_cell(a) for a in item["answers"]) + "</tr>"
                      for item in answers) + "</table>")
    style = ("body{font-family:sans-serif;margin:1em} table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px} td[dir=rtl]{text-align:right}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>fatune comparison</title><style>{style}</style>'
            f"</head><body><h1>fatune comparison</h1>{table}{inline}<h2>Side-by-side answers</h2>{side}</body></html>\n")


def compare(targets: list[str], out: str | Path, limit: int = 8, max_new_tokens: int = 96,
            precomputed: dict[str, Path] | None = None) -> Path:
    """Write the comparison report for ``targets`` (run dirs, model dirs or ids) into ``out``.
    ``precomputed`` maps a target to a metrics JSON already written for it (e.g. a base model's)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = [_entry(t, limit, max_new_tokens, (precomputed or {}).get(t)) for t in targets]
    header, rows = _table(entries)
    answers = _answers(entries)
    images = _charts(entries, out)
    (out / "report.md").write_text(_md(header, rows, entries, answers), encoding="utf-8")
    (out / "report.html").write_text(_html(header, rows, entries, answers, images), encoding="utf-8")
    return out / "report.html"
