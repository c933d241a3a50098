"""``fatune bench train``: fatune against TRL on identical training work, in one invocation.

The unit of work is a fixed set of conversations: the first ``conversations`` of a seeded shuffle of
the data (after ``heldout`` held-out ones), rendered once by fatune and trained for one epoch in
batches of ``batch_size`` conversations, LoRA r=8 on all linear layers, fp32 by default. Each arm runs
in its own subprocess (``fatune.bench.worker``), arms alternating, ``repeats`` times; the median is
kept. The top-level JSON keys compare fatune with ``trl-default`` on the default workload; the
``trl-best`` comparison and the FarsTail-chat workload (short answers) sit under ``workloads`` in the
same shape. ``variants`` adds fatune runs with config overrides (one lever switched off, say).

``precision`` is ``fp32`` (the default), ``bf16`` (every arm in bf16 mixed precision: the HF Trainer's
autocast, the frozen base in bf16, fp32 LoRA weights; see ``fatune.bench.worker``) or ``both``: every
arm runs in each, labelled ``ARM fp32`` and ``ARM bf16``. Then the top-level keys compare fatune with
``trl-default`` in bf16, ``workloads["bf16_vs_fp32"]`` is fatune bf16 over fatune fp32 (same shape:
``speedup`` is the conv/s ratio, ``loss_rel_diff`` the held-out loss's), and the other comparisons
are named ``WORKLOAD/BASELINE/PRECISION`` (``sample/trl-best/bf16``, ``sample/trl-default/fp32``, ...).
MFU is always against the matmul peak of the arm's own precision, measured in its own process.

The TRL arms need ``trl``, which fatune itself does not: ``pip install 'fatune[bench]'`` (``dev`` includes
it). Without it, a run that asks for them fails at once with that line (``require_trl``).
"""

from __future__ import annotations

import importlib.util
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from fatune.bench.flops import training_flops
from fatune.errors import FatuneError

ARMS = ("trl-default", "trl-best", "fatune")
PRECISIONS = ("fp32", "bf16", "both")


def precisions(precision: str) -> list[str]:
    """The precisions ``--precision`` runs: ``both`` is fp32 then bf16."""
    if precision not in PRECISIONS:
        raise FatuneError(f"--precision {precision}: choose fp32, bf16 or both")
    return ["fp32", "bf16"] if precision == "both" else [precision]


def require_trl(arms) -> None:
    """Fail with one line, before any work, when a TRL arm is asked for and ``trl`` is not installed."""
    trl_arms = [arm for arm in arms if arm.startswith("trl")]
    if trl_arms and importlib.util.find_spec("trl") is None:
        raise FatuneError(f"--arms {','.join(trl_arms)}: the TRL arms need trl, which is not installed: "
                          "pip install 'fatune[bench]' (or run --arms fatune alone)")


def label(arm: str, precision: str, labelled: bool) -> str:
    """An arm's name in the report: ``fatune``, or ``fatune bf16`` when several precisions run."""
    return f"{arm} {precision}" if labelled else arm


def _workload(name: str, source: str, model: str, template: str, conversations: int, heldout: int,
              batch_size: int, seed: int, max_length: int) -> dict:
    from fatune.data import IGNORE, load_conversations, render_batch, truncate
    from fatune.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    items = list(load_conversations(source, normalize=False))
    random.Random(seed).shuffle(items)
    if len(items) < heldout + batch_size:
        raise FatuneError(f"{source}: {len(items)} conversations; the bench needs at least {heldout + batch_size}")
    conversations = min(conversations, len(items) - heldout)
    conversations -= conversations % batch_size  # whole batches only: every arm sees the same steps
    val, train = items[:heldout], items[heldout:heldout + conversations]
    rows = [truncate(r, max_length) for r in render_batch(train, tokenizer, template)]
    if any(r is None for r in rows):
        raise FatuneError(f"{source}: a conversation has no trained token within {max_length} tokens")
    return {"name": name, "source": source, "conversations": [c.messages for c in train], "train_rows": rows,
            "val_rows": render_batch(val, tokenizer, template), "steps": conversations // batch_size,
            "lengths": [len(r["input_ids"]) for r in rows],  # real tokens; trained = next-token targets
            "trained": [sum(label != IGNORE for label in r["labels"][1:]) for r in rows]}


def _flops(model: str, spec: dict, method_targets: tuple[str, ...]) -> float:
    from fatune.models import load_model_config

    return training_flops(load_model_config(model), spec["lengths"], spec["trained"], spec["lora_r"], method_targets)


def _run(arm: str, spec_path: Path, out: Path, overrides: list[str]) -> dict:
    from fatune.bench.common import log_tail, run_child

    command = [sys.executable, "-m", "fatune.bench.worker", arm, str(spec_path), str(out), *overrides]
    child = run_child(command, log=out.with_suffix(".log"))
    if child.returncode != 0:
        raise FatuneError(f"bench arm {arm} failed (exit {child.returncode}):\n{log_tail(child.log, 40)}")
    result = json.loads(out.read_text())  # the worker's own peak: CUDA's allocator on a GPU, RSS on CPU
    result["command"] = " ".join(command)
    return result


def _summary(runs: list[dict], spec: dict, flops: float) -> dict:
    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    seconds, matmul_peak = median("train_seconds"), median("matmul_peak_flops")
    peaks = {p: statistics.median(r["matmul_peaks"][p] for r in runs) for p in runs[0]["matmul_peaks"]}
    return {"precision": runs[0]["precision"], "seconds": seconds, "all_seconds": [r["train_seconds"] for r in runs],
            "conv_per_s": len(spec["lengths"]) / seconds, "tokens_per_s": sum(spec["lengths"]) / seconds,
            "supervised_tokens_per_s": sum(spec["trained"]) / seconds, "peak_bytes": median("peak_bytes"),
            "train_peak_rss_bytes": median("train_peak_rss_bytes"),
            "heldout_loss": runs[0]["heldout_loss"], "step_losses": runs[0]["step_losses"],
            "mfu": flops / seconds / matmul_peak, "matmul_peak_flops": matmul_peak, "matmul_peaks": peaks,
            "weight_dtypes": runs[0]["weight_dtypes"], "command": runs[0]["command"]}


def compare(fatune: dict, baseline: dict, baseline_name: str) -> dict:
    """The issue's comparison shape: fatune against one baseline on one workload."""
    return {
        "baseline": baseline_name,
        "fatune_conv_per_s": fatune["conv_per_s"], "baseline_conv_per_s": baseline["conv_per_s"],
        "speedup": fatune["conv_per_s"] / baseline["conv_per_s"],
        "fatune_supervised_tokens_per_s": fatune["supervised_tokens_per_s"],
        "baseline_supervised_tokens_per_s": baseline["supervised_tokens_per_s"],
        "fatune_peak_bytes": fatune["peak_bytes"], "baseline_peak_bytes": baseline["peak_bytes"],
        "memory_ratio": fatune["peak_bytes"] / baseline["peak_bytes"],
        "loss_rel_diff": abs(fatune["heldout_loss"] - baseline["heldout_loss"]) / baseline["heldout_loss"],
        "mfu": fatune["mfu"], "baseline_mfu": baseline["mfu"],
        "precision": fatune["precision"], "baseline_precision": baseline["precision"],
        "fatune_command": fatune["command"], "baseline_command": baseline["command"],
    }


def run_workload(spec: dict, work: Path, repeats: int, arms, variants: dict[str, list[str]], flops: float,
                 log=print, precision_list=("fp32",)) -> dict:
    """Run every arm and variant in each precision, ``repeats`` times; ``{label: summary}``."""
    labelled = len(precision_list) > 1
    spec_paths = {}
    for precision in precision_list:  # one spec per precision: the worker reads its precision from there
        spec_paths[precision] = work / (f"{spec['name']}-{precision}.json" if labelled else f"{spec['name']}.json")
        spec_paths[precision].write_text(json.dumps({**spec, "precision": precision}))
    jobs = [(label(arm, precision, labelled), arm, overrides, precision) for precision in precision_list
            for arm, overrides in [(arm, []) for arm in arms] + list(variants.items())]
    runs: dict[str, list[dict]] = {}
    for repeat in range(repeats):
        order = jobs if repeat % 2 == 0 else jobs[::-1]  # alternate, so drift hits every arm alike
        for name, arm, overrides, precision in order:
            worker_arm = "fatune" if arm.startswith("fatune") else arm
            result = _run(worker_arm, spec_paths[precision], work / f"{spec['name']}-{name}-{repeat}.json", overrides)
            runs.setdefault(name, []).append(result)
            log(f"  {spec['name']:8} {name:28} run {repeat + 1}/{repeats}: {result['train_seconds']:7.1f} s, "
                f"peak {result['peak_bytes'] / 2**30:.2f} GiB, held-out loss {result['heldout_loss']:.5f}")
    return {name: _summary(results, spec, flops) for name, results in runs.items()}


def comparisons(results: dict[str, dict], precision_list: list[str]) -> tuple[dict | None, dict]:
    """The top-level comparison (sample, fatune vs trl-default, in bf16 when both ran) and the others by name."""
    labelled = len(precision_list) > 1
    top_precision = "bf16" if "bf16" in precision_list else precision_list[0]
    top, named = None, {}
    for workload, arms in results.items():
        for precision in precision_list:
            fatune = arms.get(label("fatune", precision, labelled))
            for base in ("trl-default", "trl-best"):
                baseline = arms.get(label(base, precision, labelled))
                if fatune is None or baseline is None:
                    continue
                result = compare(fatune, baseline, label(base, precision, labelled))
                if (workload, base, precision) == ("sample", "trl-default", top_precision):
                    top = result
                else:
                    named[f"{workload}/{base}" + (f"/{precision}" if labelled else "")] = result
        if labelled and "fatune bf16" in arms and "fatune fp32" in arms:
            key = "bf16_vs_fp32" if workload == "sample" else f"{workload}/bf16_vs_fp32"
            named[key] = compare(arms["fatune bf16"], arms["fatune fp32"], "fatune fp32")
    return top, named


def bench_train(model: str = "pypi:gemma-3-270m", method: str = "lora", data: str = "fatune:sample",
                conversations: int = 32, batch_size: int = 8, heldout: int = 16, repeats: int = 2,
                farstail: str | None = None, template: str = "gemma", precision: str = "fp32",
                max_length: int = 1024, seed: int = 42, arms=ARMS, variants: dict[str, list[str]] | None = None,
                threads: int | None = None, log=print) -> dict:
    """Run every arm and variant on each workload and return the report (``run_bench`` prints and writes it)."""
    from fatune.config import LORA_TARGETS
    from fatune.models import resolve_model

    if method not in ("lora", "qlora"):
        raise FatuneError(f"--method {method}: the TRL baselines are built for lora and qlora")
    if repeats < 1:
        raise FatuneError("--repeats must be at least 1")
    precision_list = precisions(precision)
    require_trl(arms)
    model_dir = resolve_model(model)
    settings = {"model": model_dir, "template": template, "method": method, "lora_r": 8, "lora_alpha": 16,
                "lora_targets": list(LORA_TARGETS), "batch_size": batch_size, "learning_rate": 2e-4,
                "max_grad_norm": 0.3, "precision": precision, "gradient_checkpointing": False, "seed": seed,
                "max_length": max_length, "threads": threads}
    sources = [("sample", data)] + ([("farstail", farstail)] if farstail else [])
    report: dict = {"settings": {**settings, "model_name": model, "data": data, "conversations": conversations,
                                 "heldout": heldout, "repeats": repeats, "farstail": farstail}}
    with tempfile.TemporaryDirectory(prefix="fatune-bench-") as tmp:
        work = Path(tmp)
        results = {}
        for name, source in sources:
            spec = {**settings, **_workload(name, source, model_dir, template, conversations, heldout, batch_size,
                                             seed, max_length)}
            spec["train_file"] = str(work / f"{name}.jsonl")
            Path(spec["train_file"]).write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n"
                                                        for m in spec["conversations"]))
            flops = _flops(model_dir, spec, tuple(LORA_TARGETS))
            log(f"workload {name}: {len(spec['train_rows'])} conversations, {spec['steps']} steps of {batch_size}, "
                f"{flops / 1e12:.2f} TFLOP of model work")
            results[name] = run_workload(spec, work, repeats, arms, variants or {}, flops, log, precision_list)
    report["arms"] = results
    top, report["workloads"] = comparisons(results, precision_list)
    if top is not None:
        report.update(top)
    measured = [arm["matmul_peaks"] for arms in results.values() for arm in arms.values()]
    report["matmul_peak_flops"] = {p: statistics.median(peaks[p] for peaks in measured if p in peaks)
                                   for p in ("fp32", "bf16") if any(p in peaks for peaks in measured)}
    if not farstail:
        report["workloads"]["farstail"] = "skipped: no --farstail path given"
    return report


def table(report: dict) -> str:
    lines = [f"{'workload':9} {'arm':28} {'conv/s':>8} {'sup tok/s':>10} {'peak GiB':>9} {'held-out':>9} {'MFU':>6}"]
    for name, arms in report["arms"].items():
        for arm, r in arms.items():
            lines.append(f"{name:9} {arm:28} {r['conv_per_s']:8.3f} {r['supervised_tokens_per_s']:10.1f} "
                         f"{r['peak_bytes'] / 2**30:9.2f} {r['heldout_loss']:9.5f} {r['mfu']:6.1%}")
    top = "sample/" + report.get("baseline", "").replace(" ", "/")
    shown = ([(top, report)] if "speedup" in report else []) + [
        (k, v) for k, v in report["workloads"].items() if isinstance(v, dict)]
    for key, c in shown:
        lines.append(f"{key}: speedup {c['speedup']:.2f}x, memory {c['memory_ratio']:.2f}x, "
                     f"loss diff {c['loss_rel_diff']:.2e}, fatune MFU {c['mfu']:.1%}")
    return "\n".join(lines)


LEVERS = {
    "fatune -padding_free": ["train.padding_free=false"],
    "fatune -fused_head": ["train.fused_head=false"],
    "fatune -varlen (sdpa)": ["model.attn_implementation=sdpa"],
}


def _variants(specs: list[str], levers: bool) -> dict[str, list[str]]:
    variants = dict(LEVERS) if levers else {}
    for spec in specs:
        name, _, overrides = spec.partition("=")
        if not name or "=" not in overrides:
            raise FatuneError(f"--variant {spec!r}: expected NAME=KEY=VALUE[,KEY=VALUE], "
                              "e.g. no-fused-head=train.fused_head=false")
        variants[f"fatune {name}"] = overrides.split(",")
    return variants


def run_bench(*, model: str = "pypi:gemma-3-270m", method: str = "lora", data: str = "fatune:sample",
              conversations: int = 32, batch_size: int = 8, heldout: int = 16, repeats: int = 2,
              farstail: str | None = None, precision: str = "fp32", arms: str = ",".join(ARMS),
              variants: Sequence[str] = (), levers: bool = False, threads: int | None = None,
              out: str | Path | None = None, command: str | None = None) -> dict:
    """``fatune bench train``: run, print the table, write the JSON (with machine, versions, command) to ``out``.

    ``arms``: comma-separated names from ``ARMS``; ``variants``: ``NAME=KEY=VALUE[,KEY=VALUE]`` specs, each a
    fatune run with those config overrides; ``levers``: add one variant per lever switched off (``LEVERS``)."""
    from fatune.bench.common import command_line, environment, positive, write_report

    for option, value in (("conversations", conversations), ("batch_size", batch_size), ("heldout", heldout),
                          ("repeats", repeats)):
        positive(value, "--" + option.replace("_", "-"))
    chosen = tuple(a.strip() for a in arms.split(",") if a.strip())
    unknown = [a for a in chosen if a not in ARMS]
    if unknown:
        raise FatuneError(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    report = bench_train(model=model, method=method, data=data, conversations=conversations, batch_size=batch_size,
                         heldout=heldout, repeats=repeats, farstail=farstail, precision=precision, arms=chosen,
                         variants=_variants(list(variants), levers), threads=threads)
    # the matmul peaks MFU is taken against, per precision (each arm's own is in its row)
    peaks = report.pop("matmul_peak_flops")
    report = {**report, "environment": {**environment(), "matmul_peak_flops": peaks},
              "command": command or command_line()}
    print(table(report))
    written = write_report(report, out)
    if written:
        print(f"wrote {written}")
    return report
