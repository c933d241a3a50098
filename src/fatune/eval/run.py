"""``fatune eval``: run tasks on a run or model and write ``metrics.json`` (and ``RUN/eval/metrics.json``).

Task names: ``loss`` (``loss:PATH``), ``fidelity`` (``fidelity:PATH``), ``farstail`` (``farstail:PATH``),
``mc:PATH``, ``sib200:PATH``, ``qa:PATH`` (SQuAD 2.0 JSON) and ``translate:SRC+TGT``. Paths take the
``#START:END`` selector and the ``fatune:tasks/...`` aliases of ``fatune.data.sources``. Results are keyed
by the task name without its path, except ``mc:``, ``sib200:`` and ``qa:<file stem>`` and
``translate:<stem of SRC>`` (``task_key``). ``_meta["tasks"]`` maps each key to its full task string, so
a report can evaluate the same task on another model with the same settings (``_meta["settings"]``).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from fatune.artifact import CHECKPOINTS_DIR, FATUNE_JSON, FINAL_DIR
from fatune.errors import FatuneError

# Every task, as written in --tasks: the one list fatune eval's checks and its --help are built from.
TASK_FORMS = {"loss": "loss[:PATH]", "fidelity": "fidelity[:PATH]", "farstail": "farstail[:PATH]", "mc": "mc:PATH",
              "sib200": "sib200:PATH", "qa": "qa:PATH (SQuAD 2.0 JSON)", "translate": "translate:SRC+TGT"}
TASKS = tuple(TASK_FORMS)
# Tasks that need a path, and how to write it.
NEEDS_PATH = {"mc": "mc:PATH (JSONL with question, candidates, answer)",
              "sib200": "sib200:PATH (a SIB-200 TSV with index_id, category, text)",
              "qa": "qa:PATH (a SQuAD 2.0 JSON file)",
              "translate": "translate:SRC+TGT (two line-aligned text files, English then Persian)"}
# Generation budgets when the caller gives none: see eval.qa and eval.translate for why.
DEFAULT_MAX_NEW_TOKENS = {"fidelity": 128, "qa": 32, "translate": 128}


def task_key(spec: str) -> str:
    """The results key of one task string: ``qa:fatune:tasks/pquad/heldout.json#0:5`` -> ``qa:heldout``."""
    from fatune.data.sources import parse_source

    name, _, path = spec.partition(":")
    if name == "translate" and path:
        from fatune.eval.translate import pair_of

        return f"translate:{Path(pair_of(path)[0]).stem}"
    if name in NEEDS_PATH and path:
        return f"{name}:{Path(parse_source(path)[0]).stem}"
    return name


def _check_files(name: str, path: str) -> None:
    """Fail before the model loads when a task file is missing (its contents are checked when read)."""
    from fatune.data.records import local_path
    from fatune.data.sources import parse_source

    if name == "translate":
        from fatune.eval.translate import pair_of

        files = pair_of(path)[:2]
    else:
        files = (parse_source(path)[0],)
    for file in files:
        if not local_path(file).is_file():
            raise FatuneError(f"{name}:{path}: no such file: {file}")


def parse_tasks(spec: str) -> list[tuple[str, str | None]]:
    """``[(name, path or None), ...]`` of a comma-separated task list, checked (names, paths, unique keys)."""
    tasks, keys = [], {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, path = item.partition(":")
        if name not in TASKS:
            raise FatuneError(f"unknown eval task {name!r}; choose from {', '.join(TASKS)} "
                              "(mc, sib200 and qa need :PATH, translate needs :SRC+TGT)")
        if name in NEEDS_PATH:
            if not path:
                raise FatuneError(f"the {name} task needs a file: {NEEDS_PATH[name]}")
            _check_files(name, path)
        key = task_key(item)
        if key in keys:
            raise FatuneError(f"tasks {keys[key]!r} and {item!r} would both be reported as {key!r}; "
                              "rename one of the files")
        keys[key] = item
        tasks.append((name, path or None))
    if not tasks:
        raise FatuneError("--tasks is empty; e.g. --tasks loss,fidelity")
    return tasks


def run_dir_of(run_or_model: str) -> Path | None:
    path = Path(run_or_model)
    if (path / "config.yaml").exists():
        return path
    if path.name == FINAL_DIR and (path.parent / "config.yaml").exists():
        return path.parent
    if path.parent.name == CHECKPOINTS_DIR and (path / FATUNE_JSON).exists():
        return path  # RUN/checkpoints/step-N: evaluated like a run (learning curves), its metrics kept beside it
    return None


# A JSON array of numbers (or of arrays of numbers) as json.dumps(indent=2) spreads it, one value a line.
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null|NaN|-?Infinity"
_NUMBER_ARRAY = re.compile(rf"\[\n\s*(?:{_NUMBER})(?:,\n\s*(?:{_NUMBER}))*\n\s*\]")


def dumps(results: dict) -> str:
    """Indented JSON with arrays of numbers kept on one line: per-item data stays readable and small."""
    text = json.dumps(results, indent=2, ensure_ascii=False)
    # Raw newlines never occur inside JSON strings, so a match (which spans lines) is structure, never text.
    return _NUMBER_ARRAY.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(0)[1:-1].split(",")) + "]", text)


def evaluate(run_or_model: str, tasks: str, limit: int | None = None, max_new_tokens: int | None = None,
             batch_size: int = 6, out: str | Path | None = None, chat_model=None,
             loss_run: str | Path | None = None) -> dict:
    """Run ``tasks`` (comma-separated) and return ``{task: metrics, ..., "_meta": ...}``.

    ``max_new_tokens``: the generation budget of every generating task; ``None``: each task's own default
    (``DEFAULT_MAX_NEW_TOKENS``). ``loss_run``: for a base model, whose validation split to score ``loss``
    on (a run of that base)."""
    from fatune.eval import tasks as task_functions
    from fatune.eval.qa import qa_task
    from fatune.eval.translate import translate_task
    from fatune.generation import load
    from fatune.environment import versions

    plan = parse_tasks(tasks)
    started = time.perf_counter()
    model = chat_model or load(run_or_model)
    run_dir = run_dir_of(run_or_model)
    loss_dir = run_dir or (Path(loss_run) if loss_run else None)
    results: dict = {}
    specs: dict[str, str] = {}
    for name, path in plan:
        spec = f"{name}:{path}" if path else name
        key = task_key(spec)
        budget = DEFAULT_MAX_NEW_TOKENS.get(name) if max_new_tokens is None else max_new_tokens
        if name == "loss":
            results[key] = task_functions.loss_task(model, loss_dir, path, limit)
        elif name == "fidelity":
            results[key] = task_functions.fidelity_task(model, path, limit, budget, batch_size)
        elif name == "farstail":
            results[key] = task_functions.farstail_task(model, path, limit, batch_size)
        elif name == "mc":
            results[key] = task_functions.mc_task(model, path, limit, batch_size)
        elif name == "sib200":
            results[key] = task_functions.sib200_task(model, path, limit, batch_size)
        elif name == "qa":
            results[key] = qa_task(model, path, limit, budget, batch_size)
        else:
            results[key] = translate_task(model, path, limit, budget, batch_size)
        specs[key] = spec
    results["_meta"] = {"model": run_or_model, "run": str(run_dir) if run_dir else None,
                        "method": model.loaded.method, "base_model": model.loaded.meta.get("base_model", run_or_model),
                        "template": model.template.name, "versions": versions(),
                        "seconds": round(time.perf_counter() - started, 2), "tasks": specs,
                        "settings": {"tasks": tasks, "limit": limit, "max_new_tokens": max_new_tokens,
                                     "batch_size": batch_size}}
    text = dumps(results)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    if run_dir is not None:
        kept = run_dir / "eval" / "metrics.json"
        kept.parent.mkdir(exist_ok=True)
        earlier = json.loads(kept.read_text()) if kept.exists() else {}
        tmp = kept.with_name(f".{kept.name}.tmp")
        tmp.write_text(dumps(merge_metrics(earlier, results)))
        os.replace(tmp, kept)  # a kill mid-write leaves the earlier metrics, not half a file
    return results


def _task_settings(metrics: dict) -> dict[str, dict]:
    """``{task: {spec, limit, max_new_tokens, batch_size}}``: what produced each task in ``metrics``."""
    meta = metrics.get("_meta") or {}
    common = {k: (meta.get("settings") or {}).get(k) for k in ("limit", "max_new_tokens", "batch_size")}
    own = meta.get("task_settings") or {}
    return {key: {"spec": (meta.get("tasks") or {}).get(key), **common, **(own.get(key) or {})}
            for key in metrics if key != "_meta"}


def merge_metrics(earlier: dict, new: dict) -> dict:
    """A run's kept metrics after another ``fatune eval``: the new tasks replace theirs, the other earlier
    tasks stay, and each task records its own spec and settings (``_meta.task_settings``), so that
    ``compare`` evaluates other targets on it alike."""
    kept = [key for key in earlier if key != "_meta" and key not in new]
    if not kept:
        return new
    before, after = _task_settings(earlier), _task_settings(new)
    meta = dict(new["_meta"])
    settings = {**{key: before[key] for key in kept}, **after}
    meta["tasks"] = {key: value["spec"] for key, value in settings.items()}
    meta["task_settings"] = settings
    filled = {key: value for key, value in ((earlier.get("_meta") or {}).get("filled") or {}).items() if key in kept}
    if filled:
        meta["filled"] = filled
    return {**{key: earlier[key] for key in kept}, **{k: v for k, v in new.items() if k != "_meta"}, "_meta": meta}
