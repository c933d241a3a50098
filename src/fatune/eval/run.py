"""``fatune eval``: run tasks on a run or model and write ``metrics.json`` (and ``RUN/eval/metrics.json``).

Task names: ``loss`` (``loss:PATH``), ``fidelity`` (``fidelity:PATH``), ``farstail`` (``farstail:PATH``),
``mc:PATH``. Results are keyed by the task name without its path, except ``mc:<file stem>``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fatune.errors import FatuneError

TASKS = ("loss", "fidelity", "farstail", "mc")


def parse_tasks(spec: str) -> list[tuple[str, str | None]]:
    tasks = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, path = item.partition(":")
        if name not in TASKS:
            raise FatuneError(f"unknown eval task {name!r}; choose from {', '.join(TASKS)} (mc needs mc:PATH)")
        if name == "mc" and not path:
            raise FatuneError("the mc task needs a file: mc:PATH (JSONL with question, candidates, answer)")
        tasks.append((name, path or None))
    if not tasks:
        raise FatuneError("--tasks is empty; e.g. --tasks loss,fidelity")
    return tasks


def run_dir_of(run_or_model: str) -> Path | None:
    path = Path(run_or_model)
    if (path / "config.yaml").exists():
        return path
    if path.name == "final" and (path.parent / "config.yaml").exists():
        return path.parent
    return None


def evaluate(run_or_model: str, tasks: str, limit: int | None = None, max_new_tokens: int = 128,
             batch_size: int = 6, out: str | Path | None = None, chat_model=None,
             loss_run: str | Path | None = None) -> dict:
    """Run ``tasks`` (comma-separated) and return ``{task: metrics, ..., "_meta": ...}``.

    ``loss_run``: for a base model, whose validation split to score ``loss`` on (a run of that base)."""
    from fatune.eval import tasks as task_functions
    from fatune.generation import load
    from fatune.training.final import versions

    plan = parse_tasks(tasks)
    started = time.perf_counter()
    model = chat_model or load(run_or_model)
    run_dir = run_dir_of(run_or_model)
    loss_dir = run_dir or (Path(loss_run) if loss_run else None)
    results: dict = {}
    for name, path in plan:
        if name == "loss":
            results["loss"] = task_functions.loss_task(model, loss_dir, path, limit)
        elif name == "fidelity":
            results["fidelity"] = task_functions.fidelity_task(model, path, limit, max_new_tokens, batch_size)
        elif name == "farstail":
            results["farstail"] = task_functions.farstail_task(model, path, limit, batch_size)
        else:
            results[f"mc:{Path(path).stem}"] = task_functions.mc_task(model, path, limit, batch_size)
    results["_meta"] = {"model": run_or_model, "run": str(run_dir) if run_dir else None,
                        "method": model.loaded.method, "base_model": model.loaded.meta.get("base_model", run_or_model),
                        "template": model.template.name, "versions": versions(),
                        "seconds": round(time.perf_counter() - started, 2),
                        "settings": {"tasks": tasks, "limit": limit, "max_new_tokens": max_new_tokens,
                                     "batch_size": batch_size}}
    text = json.dumps(results, indent=2, ensure_ascii=False)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    if run_dir is not None:
        (run_dir / "eval").mkdir(exist_ok=True)
        (run_dir / "eval" / "metrics.json").write_text(text)
    return results
