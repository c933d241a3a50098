"""One arm of ``fatune bench train``, alone in its process: train the workload, measure it, write JSON.

    python -m fatune.bench.worker ARM SPEC.json OUT.json [dotted.key=value ...]

ARM is ``fatune`` (``fatune.train`` on a config built from the spec, plus any overrides: the same code
as ``fatune train``), ``trl-default`` (TRL ``SFTTrainer`` + PEFT as in TRL's docs: no packing, padding
to the longest in the batch) or ``trl-best`` (TRL padding-free: each batch flattened into one row with
position ids, the same batches). TRL gets the rows fatune rendered, as ``input_ids`` + ``completion_mask``,
so every arm optimizes the same objective on the same batches in the same order (the HF Trainer's
seeded sampler, same seed and length), from the same LoRA initialization (seeded just before PEFT).

In bf16 (``precision: bf16`` in the spec) every arm runs the HF Trainer's bf16 autocast (``bf16=True``:
fatune's ``train.precision=bf16``, TRL's ``SFTConfig(bf16=True)``) on the same weights: the base in the
dtype fatune's precision rules pick for it, the trained LoRA weights in fp32. The JSON records both
dtypes per arm, so a mismatch shows. MFU is taken against the matmul peak of the precision trained in,
measured here before training (the fp32 peak always, the bf16 one too for a bf16 arm).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from fatune.data import IGNORE
from fatune.environment import peak_memory_bytes


class PeakRss:
    """Samples this process's resident memory every few ms (the training phase's own peak)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with open("/proc/self/statm") as statm:
            while not self._stop.is_set():
                statm.seek(0)
                self.peak = max(self.peak, int(statm.read().split()[1]) * self._page)
                time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def autocast(model, precision: str):
    """bf16 autocast on the model's device for a bf16 arm (what the Trainer trained under), else nothing."""
    import contextlib

    import torch

    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


def heldout_loss(model, rows: list[dict], precision: str = "fp32") -> float:
    """Mean next-token loss over the trained tokens of ``rows``, one conversation at a time, full logits,
    as ``fatune eval``'s loss task computes it (``target_logprobs``): identical for every arm (in bf16,
    under the same autocast every arm trained under)."""
    import torch

    from fatune.eval.choice import target_logprobs

    device = next(model.parameters()).device
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad(), autocast(model, precision):
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]], device=device), use_cache=False).logits
            picked, scored = target_logprobs(logits[0, :-1], torch.tensor(row["labels"][1:], device=device))
            nll -= picked.sum().item()
            count += int(scored.sum())
    return nll / max(count, 1)


def fatune_config(spec: dict, out: Path, overrides: list[str]):
    from fatune.config import from_dict

    raw = {
        "model": {"path": spec["model"], "template": spec["template"]},
        "data": {"path": spec["train_file"], "val_ratio": 0.0, "packing": False, "max_length": spec["max_length"],
                 "normalize": False},
        # chat_tokens off: TRL's arms train LoRA alone, and the bench compares identical work.
        "method": {"name": spec["method"], "r": spec["lora_r"], "alpha": spec["lora_alpha"], "dropout": 0.0,
                   "chat_tokens": False},
        "train": {"max_steps": spec["steps"], "batch_size": spec["batch_size"], "grad_accum": 1,
                  "learning_rate": spec["learning_rate"], "scheduler": "constant", "warmup_ratio": 0.0,
                  "max_grad_norm": spec["max_grad_norm"], "optimizer": "adamw_torch", "precision": spec["precision"],
                  "gradient_checkpointing": spec["gradient_checkpointing"], "seed": spec["seed"],
                  "save_steps": spec["steps"] + 1, "eval_steps": spec["steps"] + 1, "logging_steps": 1},
        "output": {"dir": str(out)},
    }
    from fatune.config import apply_override

    for override in overrides:
        apply_override(raw, override)
    return from_dict(raw, where="bench spec")


def weight_dtypes(model) -> dict[str, str]:
    """The dtypes of the frozen projection weights (the base, ``uint8`` when 4-bit) and of the trained
    weights (the LoRA adapters), e.g. ``{"base": "bfloat16", "trained": "float32"}``."""
    base, trained = set(), set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            trained.add(str(param.dtype).removeprefix("torch."))
        elif name.endswith("proj.base_layer.weight") or name.endswith("proj.weight"):
            base.add(str(param.dtype).removeprefix("torch."))
    return {"base": ",".join(sorted(base)), "trained": ",".join(sorted(trained))}


def base_dtype(spec: dict):
    """The dtype fatune loads this spec's base in (``precision.resolve_precision``, as ``fatune.train`` calls it), so
    the TRL arms load theirs the same way: fp32 in an fp32 run; in bf16, what fatune's bf16 mixed
    precision stores the frozen base in (``torch.bfloat16``, which is also how TRL's docs load a model
    for ``bf16=True``)."""
    from fatune.models import load_model_config
    from fatune.training import precision as precision_rules

    config = fatune_config(spec, Path(tempfile.gettempdir()) / "unused", [])
    return precision_rules.resolve_precision(config.train, load_model_config(spec["model"]).model_type,
                                   config.method.name).model_dtype


def run_fatune(spec: dict, work: Path, overrides: list[str]) -> tuple[object, float, list[float]]:
    from fatune.training import train
    from fatune.training.callbacks import read_metrics

    config = fatune_config(spec, work / "run", overrides)
    result = train(config, overwrite=True)
    losses = [row["loss"] for row in read_metrics(result.out) if "loss" in row and "eval_loss" not in row]
    return result.model, result.summary["train_seconds"], losses


def run_trl(spec: dict, work: Path, padding_free: bool) -> tuple[object, float, list[float]]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from fatune.methods.qlora import quantization_config
    from fatune.models import load_model

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    # What a TRL user loads: transformers' default attention (eager for Gemma 2, which refuses sdpa), and for
    # qlora the same 4-bit settings as the fatune arm. The base dtype is fatune's (see base_dtype): in bf16 the
    # frozen base sits in bf16 while PEFT keeps the LoRA weights fp32 (get_peft_model's default
    # autocast_adapter_dtype=True) and the Trainer autocasts, exactly what fatune's bf16 does.
    method = fatune_config(spec, work / "unused", []).method
    model = load_model(spec["model"], dtype=base_dtype(spec),
                       quantization_config=quantization_config(method) if method.load_in_4bit else None)
    rows = spec["train_rows"]
    dataset = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows],
                                 "completion_mask": [[int(x != IGNORE) for x in r["labels"]] for r in rows]})
    args = SFTConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        max_steps=spec["steps"], learning_rate=spec["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=spec["max_grad_norm"], optim="adamw_torch", weight_decay=0.0, seed=spec["seed"],
        data_seed=spec["seed"], bf16=spec["precision"] == "bf16", use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=spec["gradient_checkpointing"], logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, completion_only_loss=True, packing=False, padding_free=padding_free,
        max_length=None if padding_free else spec["max_length"])
    peft_config = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
                             target_modules=spec["lora_targets"], task_type="CAUSAL_LM")
    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    set_seed(spec["seed"])  # as fatune does just before applying the method: the same LoRA initialization
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[Losses()])
    # On a 4-bit base TRL casts the LoRA weights to bf16 (the QLoRA paper's advice), whatever the precision;
    # fatune trains them in fp32. Back to fp32 (same values: bf16 -> fp32 is exact) before the optimizer
    # exists, so every arm updates fp32 weights. The initialization was already rounded to bf16 by then, so
    # qlora's step losses agree less tightly than lora's.
    for param in trainer.model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    output = trainer.train()
    return trainer.model, output.metrics["train_runtime"], losses


def main(argv: list[str]) -> int:
    import torch

    from fatune.bench.flops import matmul_peak_flops

    arm, spec_path, out_path, *overrides = argv
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    precision = spec["precision"]
    peaks = {"fp32": matmul_peak_flops()}
    if precision == "bf16":
        peaks["bf16"] = matmul_peak_flops(dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory(prefix=f"fatune-bench-{arm}-") as tmp, PeakRss() as sampled:
        if arm == "fatune":
            model, seconds, losses = run_fatune(spec, Path(tmp), overrides)
        elif arm in ("trl-default", "trl-best"):
            model, seconds, losses = run_trl(spec, Path(tmp), padding_free=arm == "trl-best")
        else:
            raise SystemExit(f"unknown arm {arm!r}")
        train_peak = sampled.peak
        loss = heldout_loss(model, spec["val_rows"], precision)
    result = {"arm": arm, "overrides": overrides, "precision": precision, "train_seconds": seconds,
              "step_losses": losses, "heldout_loss": loss, "peak_bytes": peak_memory_bytes(),
              "train_peak_rss_bytes": train_peak, "matmul_peak_flops": peaks[precision], "matmul_peaks": peaks,
              "weight_dtypes": weight_dtypes(model), "threads": torch.get_num_threads()}
    Path(out_path).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
