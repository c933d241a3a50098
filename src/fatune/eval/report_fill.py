"""Like with like for ``fatune compare``: every target scored on the same tasks with the same settings.

A task that one target has and another lacks is evaluated for the latter with the holder's task spec
(``_meta["tasks"]``) and settings (``limit``, ``max_new_tokens``, ``batch_size`` from its
``_meta["settings"]``), so a gain is never the difference between two test sets. Each target's model
loads once for all of its missing tasks; a base model computes in the runs' precision (as ``fatune demo``
evaluates it), so base and runs differ by training only.

What is computed is kept and read again by the next compare: a run's merged metrics go back to
``RUN/eval/metrics.json``; a base model's to ``OUT/metrics/NAME.json``. Every filled task is recorded in
``_meta["filled"][TASK] = {"spec", "settings", "from"}``; a filled task whose recorded spec or settings no
longer match its holder's (the holder was re-evaluated) is evaluated again. A failed evaluation is kept as
the task's error (``n/a`` with the reason in the report) and never stops the report.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fatune.artifact import final_dir, read_metadata
from fatune.errors import FatuneError
from fatune.eval.run import dumps, evaluate, task_key

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 6  # evaluate's default


def load(target: str, precision: str | None = None):
    """The chat model for ``target`` (imported here: torch is slow to import and a report may need none)."""
    from fatune.generation import load as load_chat_model

    return load_chat_model(target, precision=precision) if precision else load_chat_model(target)


def store_path(out: Path, name: str) -> Path:
    """Where a base model's computed metrics are kept between compares."""
    safe = re.sub(r"[^\w.-]+", "-", name).strip("-") or "model"
    return out / "metrics" / f"{safe}.json"


def setup_of(metrics: dict, key: str) -> tuple[str, dict] | None:
    """``(spec, settings)`` that produced ``metrics[key]``, or None where the metrics do not say."""
    meta = metrics.get("_meta") or {}
    filled = (meta.get("filled") or {}).get(key)
    if filled:
        return filled["spec"], filled["settings"]
    settings = meta.get("settings") or {}
    # Metrics gathered task by task with their own sizes (``fatune demo``) record each task's settings.
    settings = {**settings, **((meta.get("task_settings") or {}).get(key) or {})}
    spec = (meta.get("tasks") or {}).get(key)
    if spec is None:  # metrics written before _meta["tasks"]: the task list itself
        spec = next((s.strip() for s in str(settings.get("tasks") or "").split(",") if _key_or_none(s.strip()) == key),
                    None)
    if spec is None:
        return None
    # max_new_tokens None: each task's own default budget, as evaluate() applied it.
    return spec, {"limit": settings.get("limit"), "max_new_tokens": settings.get("max_new_tokens"),
                  "batch_size": settings.get("batch_size", DEFAULT_BATCH_SIZE)}


def _key_or_none(spec: str) -> str | None:
    try:
        return task_key(spec) if spec else None
    except FatuneError:  # a malformed old task string names no task we could evaluate again
        return None


def _filled(entry: dict, key: str) -> bool:
    return key in ((entry["metrics"].get("_meta") or {}).get("filled") or {})


def catalog(entries: list[dict], reference: int, limit: int, max_new_tokens: int) -> dict[str, tuple]:
    """``{task: (spec, settings, holder entry)}`` for every task some target has: the reference's own
    result first, then the other targets' own, then filled ones. Targets with no metrics at all also get
    the defaults (``loss`` where some target is a run, ``fidelity``) at compare's limit."""
    order = [entries[reference]] + [e for i, e in enumerate(entries) if i != reference]
    tasks: dict[str, tuple] = {}
    for filled in (False, True):
        for entry in order:
            for key, value in entry["metrics"].items():
                if (key == "_meta" or key in tasks or not isinstance(value, dict) or "skipped" in value
                        or _filled(entry, key) != filled):
                    continue
                setup = setup_of(entry["metrics"], key)
                if setup:
                    tasks[key] = (*setup, entry)
    if any(not e["metrics"] for e in entries):
        defaults = {"limit": limit, "max_new_tokens": max_new_tokens, "batch_size": DEFAULT_BATCH_SIZE}
        if any(e["run"] for e in entries) and "loss" not in tasks:  # a base model's loss needs a run's split
            tasks["loss"] = ("loss", defaults, None)
        if "fidelity" not in tasks:
            tasks["fidelity"] = ("fidelity", defaults, None)
    return tasks


def missing(entry: dict, tasks: dict[str, tuple]) -> list[str]:
    """The tasks ``entry`` must be evaluated on: absent, or filled with another spec or settings."""
    todo = []
    for key, (spec, settings, holder) in tasks.items():
        if holder is entry:
            continue
        if key not in entry["metrics"] or (_filled(entry, key) and setup_of(entry["metrics"], key) != (spec, settings)):
            todo.append(key)
    return todo


def runs_precision(entries: list[dict]) -> str | None:
    """The precision the runs computed in (the first run recording one), for the base models."""
    for entry in entries:
        if not entry["run"]:
            continue
        final = final_dir(entry["run"])  # RUN/final, or a checkpoint itself
        precision = read_metadata(final, require=()).get("precision") if final is not None else None
        if precision:
            return precision
    return None


def _merge(entry: dict, result: dict, spec: str, settings: dict, holder: dict | None) -> None:
    metrics = entry["metrics"]
    if "_meta" not in metrics:  # a target with no metrics of its own: describe the model as evaluate did
        metrics["_meta"] = {k: v for k, v in result.get("_meta", {}).items()
                            if k not in ("settings", "tasks", "seconds")}
    filled = metrics["_meta"].setdefault("filled", {})
    for key, value in result.items():
        if key != "_meta":
            metrics[key] = value
            filled[key] = {"spec": spec, "settings": settings, "from": holder["name"] if holder else None}
            entry["errors"].pop(key, None)


def fill(entries: list[dict], reference: int, out: Path, limit: int, max_new_tokens: int) -> None:
    """Evaluate every target on the tasks it lacks (see the module docstring); updates ``entries``."""
    tasks = catalog(entries, reference, limit, max_new_tokens)
    precision = runs_precision(entries)
    first_run = next((e["run"] for e in entries if e["run"]), None)
    for entry in entries:
        todo = missing(entry, tasks)
        if not todo:
            continue
        target = entry["target"]
        try:
            chat_model = load(target, None if entry["run"] else precision)
        except Exception as error:  # a report with n/a beats no report
            log.warning("compare: %s: could not load: %s", target, error)
            entry["errors"].update({key: f"{type(error).__name__}: {error}" for key in todo})
            continue
        changed = False
        for key in todo:
            spec, settings, holder = tasks[key]
            # A base model has no validation split of its own: its loss is on the holder's run's (or the first run's).
            loss_run = ((holder and holder["run"]) or first_run) if entry["run"] is None and key == "loss" else None
            log.info("compare: %s: evaluating %s (%s) like %s", target, key, spec,
                     holder["name"] if holder else "default")
            try:
                result = evaluate(target, spec, limit=settings["limit"], max_new_tokens=settings["max_new_tokens"],
                                  batch_size=settings["batch_size"], chat_model=chat_model,
                                  loss_run=str(loss_run) if loss_run else None)
            except Exception as error:
                entry["errors"][key] = f"{type(error).__name__}: {error}"
                log.warning("compare: %s: %s failed: %s", target, key, error)
                continue
            _merge(entry, result, spec, settings, holder)
            changed = True
        if changed:
            # evaluate() leaves only its own tasks in RUN/eval/metrics.json: write everything back.
            path = entry["run"] / "eval" / "metrics.json" if entry["run"] else store_path(out, entry["name"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps(entry["metrics"]))
