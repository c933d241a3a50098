"""Rendering for ``fatune compare``: the charts, ``report.md`` and a self-contained ``report.html``.

Both documents show the same sections in the same order: the gains table first (what the reader came
for), then the scores, the runs table, the charts and the side-by-side answers. A section is
``{"title", "header", "rows", "note"}`` whose cells are strings or ``(text, mark)`` pairs, ``mark`` being
``better`` / ``worse`` for a significant gain: bold in Markdown, bold and coloured in HTML. The HTML needs
no network: images are inlined and Persian text sits in ``dir="rtl"`` cells.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from fatune.data.script import persian_share
from fatune.eval.gains import fmt, is_percent

# Headline metrics drawn in the quality chart, besides each task's headline (0-100 scores divided by 100).
_FIDELITY_BARS = [("fidelity", "clean_persian_rate"), ("fidelity", "persian_share")]


def _parts(cell) -> tuple[str, str]:
    return (cell, "") if isinstance(cell, str) else cell


def quality_bars(entries: list[dict], headline: dict) -> dict[str, list[float]]:
    """``{label: [value per entry]}`` on 0-1: Persian fidelity and every benchmark's headline."""
    tasks = [(task, metric) for task, metric in headline.items() if task not in ("loss", "fidelity")]
    bars = {}
    for task, metric in _FIDELITY_BARS + tasks:
        values = [(e["metrics"].get(task) or {}).get(metric) for e in entries]
        if any(v is not None for v in values):
            scale = 100 if is_percent(task, metric) else 1
            label = f"{task} {metric.replace('_', ' ')}" + (" /100" if scale == 100 else "")
            bars[label] = [(v or 0.0) / scale for v in values]
    return bars


def charts(entries: list[dict], headline: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fatune.training.callbacks import read_metrics

    names = [e["name"] for e in entries]
    quality = quality_bars(entries, headline)
    figure, axes = plt.subplots(figsize=(max(6, (0.5 + 0.25 * len(quality)) * len(names)) + 3, 4))
    width = 0.8 / max(1, len(quality))
    for k, (label, values) in enumerate(quality.items()):
        axes.bar([i + k * width for i in range(len(names))], values, width, label=label)
    axes.set_xticks([i + width * (len(quality) - 1) / 2 for i in range(len(names))], names, rotation=15)
    axes.set_ylim(0, 1)
    axes.set_title("quality (higher is better; 0-100 scores / 100; missing = 0)")
    if quality:  # beside the bars, not over them
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
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


def answers(entries: list[dict]) -> list[dict]:
    """One row per suite prompt: the prompt and every entry's answer."""
    by_entry = [{s["prompt"]: s["answer"] for s in (e["metrics"].get("fidelity") or {}).get("samples", [])}
                for e in entries]
    prompts = list(dict.fromkeys(p for answers in by_entry for p in answers))
    return [{"prompt": p, "answers": [answers.get(p, "n/a") for answers in by_entry]} for p in prompts]


def score_text(task: str, metric: str, values: dict) -> str:
    """``0.760 [0.697, 0.813]`` (the CI from ``METRIC_ci95`` where the task reports one)."""
    ci = values.get(f"{metric}_ci95")
    text = fmt(task, metric, values[metric])
    return text + (f" [{fmt(task, metric, ci[0])}, {fmt(task, metric, ci[1])}]" if ci and None not in ci else "")


def _md_cell(cell) -> str:
    text, mark = _parts(cell)
    text = str(text).replace("|", "/").replace("\n", " ")
    return f"**{text}**" if mark else text


def markdown(sections: list[dict], entries: list[dict], side: list[dict]) -> str:
    lines = ["# fatune comparison", ""]
    for section in sections:
        lines += [f"## {section['title']}", ""]
        if section["rows"]:
            lines += ["| " + " | ".join(section["header"]) + " |", "|" + "---|" * len(section["header"])]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in section["rows"]]
            lines.append("")
        if section.get("note"):
            lines += [section["note"], ""]
    lines += ["![quality](quality.png)", "", "![loss curves](loss_curves.png)", "", "## Side-by-side answers", ""]
    for item in side:
        lines += [f"### {item['prompt']}", ""]
        lines += [f"**{e['name']}**: {a}".replace("\n", " ") + "\n" for e, a in zip(entries, item["answers"])]
    return "\n".join(lines) + "\n"


def _cell(cell) -> str:
    text, mark = _parts(cell)
    text = str(text)
    direction = ' dir="rtl"' if persian_share(text) > 0.5 else ""
    body = html.escape(text).replace(chr(10), "<br>")
    return f'<td class="{mark}"{direction}><b>{body}</b></td>' if mark else f"<td{direction}>{body}</td>"


def _table(header: list[str], rows: list[list]) -> str:
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows) + "</table>")


def page(sections: list[dict], entries: list[dict], side: list[dict], images: list[Path]) -> str:
    body = ""
    for section in sections:
        body += f"<h2>{html.escape(section['title'])}</h2>"
        body += _table(section["header"], section["rows"]) if section["rows"] else ""
        body += f"<p>{html.escape(section['note'])}</p>" if section.get("note") else ""
    inline = "".join(f'<p><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                     "</p>" for p in images)
    answers_table = _table(["prompt", *(e["name"] for e in entries)],
                           [[item["prompt"], *item["answers"]] for item in side])
    style = ("body{font-family:sans-serif;margin:1em} table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px} td[dir=rtl]{text-align:right}"
             "td.better{background:#dff5df;color:#0a5c0a} td.worse{background:#f9e0e0;color:#8a1010}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>fatune comparison</title><style>{style}</style>'
            f"</head><body><h1>fatune comparison</h1>{body}{inline}<h2>Side-by-side answers</h2>{answers_table}"
            "</body></html>\n")
