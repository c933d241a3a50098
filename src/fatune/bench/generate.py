"""``fatune bench generate``: tokens/s of each method's generation, and cached vs ``--no-cache`` P-Tuning.

Every model generates through fatune's own engine (``ChatModel``, what ``fatune generate`` and ``fatune
chat`` use), greedy, exactly ``--new-tokens`` new tokens per prompt (``min_new_tokens`` =
``max_new_tokens``), one prompt at a time, after a short warm-up.

* **Methods, untrained** (``--methods``, default ``ptuning,lora,qlora,embed_head,base`` on
  ``pypi:gemma-3-270m``): the base model is loaded the way ``fatune.generation.load`` loads it (4-bit
  nf4 for qlora) and ``fatune.methods.get_method(name).apply(model, MethodConfig(name=...))`` adds the
  method in memory with its default settings (P-Tuning: 20 virtual tokens, encoder hidden 128; LoRA r=8
  on all seven projections; embed_head with ``rows=persian``, whose forward goes through the row hooks).
  Generation speed does not depend on the trained values, only on the computation, so untrained
  methods time what trained runs of them would. Untrained LoRA (B = 0) computes the base model's
  function exactly, and embed_head (rows unchanged) up to rounding (its head hook recomputes the rows'
  logits in a separate matmul), so with ``base`` in the list the table also says whether each
  untrained method's tokens equal the base's (for ptuning and qlora they are not expected to).
* **Runs** (``--run DIR``, repeatable): trained fatune run dirs (or any ``fatune generate`` target),
  loaded with ``fatune.generation.load``. With ``--run`` and no ``--methods``, only the runs are timed.
* **Cached vs ``--no-cache`` P-Tuning**: on the first P-Tuning model timed, each prompt is generated
  again on the uncached reference path (PEFT's ``generate(use_cache=False)``), which is quadratic in
  the length; the report gives both times, the speedup, and whether both paths produced the same tokens.
  ``--no-cache-compare`` skips it.
* **bf16 vs fp32** (``--precision bf16|both``, default ``fp32``): in bf16 the base weights are loaded in
  bf16 (``load_model(..., dtype=torch.bfloat16)``) and generation runs under ``torch.autocast`` in bf16
  on the model's device, so fp32 pieces (LoRA weights, P-Tuning's prompt encoder) meet bf16 ones, as in
  a bf16 training run. ``both`` times every target in fp32 and then in bf16 in the same invocation and
  adds a table: tokens/s in each, the speedup, and whether the greedy tokens are identical (else the
  share of new-token positions that differ, and where each prompt's output first diverges).

Prompts (``--prompts``, comma-separated names, or a prompts file in any source format): ``short chat``
(16 tokens), ``seed translation`` (the seed's EN->FA prompt, ~160 tokens, from
``SHARED/seed/prompts.jsonl``), ``FarsTail NLI`` (~156 tokens, ``SHARED/data/farstail/val.tsv``) and
``long reading`` (three long user turns of the bundled sample, ~430 tokens). ``SHARED`` is the folder
``--shared`` names (no default): the package bundles neither file (the seed's prompts file is not part of
it, and the bundled FarsTail subset has no validation split), so those two prompts, and so the default
``--prompts``, need ``--shared``; ``short chat`` and ``long reading`` need nothing.

    fatune bench generate --shared path/to/shared                # defaults: about 2.5 minutes on 2 cores
    fatune bench generate --methods ptuning --new-tokens 128 --shared path/to/shared \
        --prompts "short chat,seed translation,FarsTail NLI,long reading"
    fatune bench generate --methods ptuning,base --shape gemma3-1b --prompts "short chat"
    fatune bench generate --run runs/demo/ptuning --run runs/demo/lora --shared path/to/shared --out gen.json
    fatune bench generate --methods base,ptuning --precision both --no-cache-compare --shared path/to/shared
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import time
from pathlib import Path
from typing import Callable, Sequence

from fatune.bench.common import (
    command_line,
    environment,
    format_table,
    positive,
    write_report,
)
from fatune.artifact import FATUNE_JSON, FINAL_DIR, final_dir, read_metadata
from fatune.errors import FatuneError

DEFAULT_MODEL = "pypi:gemma-3-270m"
METHODS = ("ptuning", "lora", "qlora", "embed_head", "base")
PROMPTS = ("short chat", "seed translation", "FarsTail NLI", "long reading")
DEFAULT_PROMPTS = "short chat,seed translation"
DEFAULT_NEW_TOKENS = 64
SHAPES = {"gemma3-1b": "random Gemma 3 1B-shaped model"}
PRECISIONS = ("fp32", "bf16", "both")


def precisions(precision: str) -> list[str]:
    """The precisions ``--precision`` times: ``both`` is fp32 then bf16."""
    if precision not in PRECISIONS:
        raise FatuneError(f"--precision {precision}: choose fp32, bf16 or both")
    return ["fp32", "bf16"] if precision == "both" else [precision]


def weights_dtype(precision: str):
    """What the base weights are loaded in: bf16 for ``bf16``, fp32 otherwise."""
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(model, precision: str):
    """bf16 autocast on the model's device for ``bf16`` (fp32 adapters meet bf16 weights), else nothing."""
    import torch

    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


# -- prompts ---------------------------------------------------------------------------------------------
def _builtin_prompt(name: str, shared: Path | None) -> list[dict]:
    from fatune.data import load_conversations

    if name == "short chat":
        return [{"role": "user", "content": "سلام. تو کی هستی؟"}]
    if name == "seed translation":  # the last line of the seed's prompts file, its system prompt's role fixed
        file = _need(shared, Path("seed", "prompts.jsonl"), name)
        messages = json.loads(file.read_text(encoding="utf-8").splitlines()[-1])["messages"]
        messages[0]["role"] = "system"
        return messages
    if name == "FarsTail NLI":
        file = _need(shared, Path("data", "farstail", "val.tsv"), name)
        return next(load_conversations(file)).messages[:-1]
    # Persian SlimOrca prompts are often long (a system prompt and a passage): the sample's three longest
    # user turns as one reading task, about 430 tokens.
    users = sorted((m["content"] for c in load_conversations("fatune:sample") for m in c.messages
                    if m["role"] == "user"), key=len)[-3:]
    return [{"role": "system", "content": "شما یک دستیار مفید هستید. با دقت بخوانید و کامل پاسخ دهید."},
            {"role": "user", "content": "\n\n".join(users)}]


def _need(shared: Path | None, relative: Path, prompt: str) -> Path:
    """``shared / relative``, or a one-line error naming ``--shared`` when it is not given or lacks the file."""
    file = shared / relative if shared is not None else None
    if file is None or not file.exists():
        where = file if file is not None else f"DIR/{relative.as_posix()}"
        raise FatuneError(f"the {prompt!r} prompt needs {where}; pass --shared DIR (the folder with seed/ and "
                          f"data/farstail/) or other --prompts ({', '.join(PROMPTS)}, or a prompts file)")
    return file


def load_prompts(spec: str, shared: str | Path | None = None) -> list[tuple[str, list[dict]]]:
    """``[(name, messages)]`` for ``spec``: comma-separated built-in names, or a prompts file. ``shared``: the
    folder the ``seed translation`` and ``FarsTail NLI`` prompts are read from (see the module docstring)."""
    path = Path(spec).expanduser()
    if path.is_file():
        from fatune.data import load_conversations

        return [(f"{path.name}#{i + 1}", c.messages)
                for i, c in enumerate(load_conversations(path, purpose="prompt", normalize=False))]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROMPTS]
    if unknown or not names:
        raise FatuneError(f"--prompts: unknown prompt {unknown[0] if unknown else spec!r}; choose from "
                          f"{', '.join(PROMPTS)} (comma-separated) or pass a prompts file")
    folder = Path(shared).expanduser() if shared is not None else None
    return [(name, _builtin_prompt(name, folder)) for name in names]


# -- models ----------------------------------------------------------------------------------------------
def gemma3_1b_shaped():
    """A randomly initialized model with Gemma 3 1B's shape (26 layers, hidden 1152, 262k vocab, 1.0B
    parameters). Speed does not depend on the weights, and at this size the uncached path is compute-bound."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                              max_position_embeddings=32768, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    with torch.device("meta"):
        model = Gemma3ForCausalLM(config)
    model = model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.zero_() if "norm" in name else param.normal_(0, 0.02)
    model.tie_weights()
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def untrained(method: str, model: str = DEFAULT_MODEL, template: str = "gemma", shape: str | None = None,
              precision: str = "fp32"):
    """A ``ChatModel`` of ``model`` with ``method`` applied in memory, untrained (``base``: none), its base
    weights in ``precision``'s dtype."""
    import torch

    from fatune.config import MethodConfig
    from fatune.generation import ChatModel
    from fatune.generation.loading import Loaded
    from fatune.generation.loading import load as load_artifact
    from fatune.methods import get_method

    if shape:
        from fatune.models import load_tokenizer

        tokenizer = load_tokenizer(model)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        loaded = Loaded(gemma3_1b_shaped().to(weights_dtype(precision)), tokenizer, template)
    else:
        try:
            loaded = load_artifact(model, template=template, load_in_4bit=method == "qlora",
                                   dtype=weights_dtype(precision))
        except ImportError as error:
            raise FatuneError(f"{method}: {error}") from None
    if method != "base":
        cfg = MethodConfig(name=method, **({"rows": "persian"} if method == "embed_head" else {}))
        torch.manual_seed(0)  # the same prompt encoder / LoRA initialization every time
        applied = get_method(method).apply(loaded.model, cfg, tokenizer=loaded.tokenizer).eval()
        loaded = dataclasses.replace(loaded, model=applied, method=method)
    return ChatModel(loaded)


def from_run(run: str, precision: str = "fp32"):
    from fatune.generation import load

    return load(run, dtype=weights_dtype(precision))


# -- timing ----------------------------------------------------------------------------------------------
def timed(model, prompt, new_tokens: int, use_cache: bool = True, precision: str = "fp32") -> tuple[float, list[int]]:
    """Seconds to generate exactly ``new_tokens`` tokens for one prompt (under ``precision``'s autocast), and
    the tokens."""
    start = time.perf_counter()
    with autocast(model.model, precision):
        result = model.generate([prompt], use_cache=use_cache, max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens)[0]
    return time.perf_counter() - start, result["output_ids"]


@dataclasses.dataclass
class Target:
    label: str
    method: str
    source: str  # "untrained" or the run dir
    build: Callable  # build(precision) -> ChatModel


def plan(methods: str | None, runs: Sequence[str], model: str, template: str, shape: str | None) -> list[Target]:
    """What to time, validated before any model loads."""
    if methods is None:
        chosen = [] if runs else list(METHODS)
    else:
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in METHODS]
        if unknown:
            raise FatuneError(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if shape and "qlora" in chosen:
        raise FatuneError("--shape builds the model in memory, and qlora needs a 4-bit model loaded from disk; "
                          "drop qlora from --methods or drop --shape")
    if shape and runs:
        raise FatuneError("--shape times untrained methods on a random model; it cannot be combined with --run")
    if not shape and model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
        raise FatuneError(f"--model {model}: no such model directory")
    targets = [Target(m, m, "untrained", lambda precision, m=m: untrained(m, model, template, shape, precision))
               for m in dict.fromkeys(chosen)]
    for run in runs:
        if not Path(run).expanduser().exists():
            raise FatuneError(f"--run {run}: no such run directory")
        final = final_dir(run) if (Path(run) / FINAL_DIR).is_dir() or (Path(run) / FATUNE_JSON).is_file() else None
        method = read_metadata(final, require=()).get("method", "?") if final is not None else "?"  # unfinished: ?
        label = f"{method} ({Path(run).name})"
        if any(t.label == label for t in targets):  # two runs with the same dir name: name them in full
            label = f"{method} ({run})"
        targets.append(Target(label, method, str(run), lambda precision, run=run: from_run(run, precision)))
    if not targets:
        raise FatuneError("nothing to time: give --methods and/or --run")
    return targets


def bench_generate(methods: str | None = None, runs: Sequence[str] = (), model: str = DEFAULT_MODEL,
                   new_tokens: int = DEFAULT_NEW_TOKENS, prompts: str = DEFAULT_PROMPTS,
                   shared: str | Path | None = None, template: str = "gemma", shape: str | None = None,
                   cache_compare: bool = True, out: str | Path | None = None, command: str | None = None,
                   precision: str = "fp32") -> dict:
    """Time every target (see the module docstring), print the tables, write the JSON report to ``out``."""
    import torch

    positive(new_tokens, "--new-tokens")
    precision_list = precisions(precision)
    if shape and shape not in SHAPES:
        raise FatuneError(f"--shape: unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    targets = plan(methods, runs, model, template, shape)
    chosen_prompts = load_prompts(prompts, shared)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one "Loading weights" bar per model drowns the table

    results, compare, ids_by = [], None, {}
    for target in targets:
        for dtype in precision_list:
            suffix = "" if dtype == "fp32" else f" ({dtype})"
            print(f"fatune bench generate: {target.label}{suffix} ...", flush=True)
            began = time.perf_counter()
            chat = target.build(dtype)
            load_s = time.perf_counter() - began
            result, ids_by[target.label, dtype] = _time_target(chat, chosen_prompts, new_tokens, dtype)
            results.append({"name": target.label, "method": target.method, "source": target.source,
                            "precision": dtype, "load_seconds": round(load_s, 1), **result})
            if cache_compare and compare is None and chat.loaded.is_prompt_learning:
                compare = _cache_comparison(chat, target.label, chosen_prompts, new_tokens, result["prompts"],
                                            ids_by[target.label, dtype], dtype)
            del chat
            gc.collect()

    has_base = any(t.label == "base" and t.source == "untrained" for t in targets)
    for result in results:
        same = None
        if has_base and result["source"] == "untrained" and result["name"] != "base":
            same = ids_by[result["name"], result["precision"]] == ids_by["base", result["precision"]]
        result["same_tokens_as_base"] = same

    report = {"bench": "generate", "command": command or command_line(), **environment(),
              "model": SHAPES[shape] if shape else model, "template": template,
              "new_tokens_per_prompt": new_tokens, "batch_size": 1, "preset": "greedy",
              "prompts": [{"name": n, "messages": len(p)} for n, p in chosen_prompts],
              "threads": torch.get_num_threads(), "precision": precision, "methods": results, "ptuning_cache": compare,
              "precision_compare": precision_comparison(results, ids_by) if len(precision_list) > 1 else None}
    print(format_report(report))
    write_report(report, out)
    return report


def _time_target(chat, prompts, new_tokens: int, precision: str) -> tuple[dict, list[list[int]]]:
    """Time one loaded target on every prompt: its report row (without names) and the generated ids."""
    timed(chat, prompts[0][1], 4, precision=precision)  # warm up kernels and caches
    per_prompt, ids, total_s = [], [], 0.0
    for name, prompt in prompts:
        seconds, output = timed(chat, prompt, new_tokens, precision=precision)
        ids.append(output)
        total_s += seconds
        per_prompt.append({"prompt": name, "prompt_tokens": len(chat.prompt_ids(prompt)),
                           "seconds": round(seconds, 3), "new_tokens": len(output),
                           "tokens_per_s": round(len(output) / seconds, 2)})
    tokens = sum(p["new_tokens"] for p in per_prompt)
    return {"seconds": round(total_s, 2), "new_tokens": tokens, "tokens_per_s": round(tokens / total_s, 2),
            "prompts": per_prompt}, ids


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two generations differ (a length difference counts), or None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def precision_comparison(results: list[dict], ids_by: dict) -> list[dict]:
    """bf16 against fp32 for every target timed in both: tokens/s, speedup, and how far the greedy tokens
    agree. Greedy decoding feeds each token back, so after a first difference the rest usually differs too:
    ``first_difference`` per prompt says more than ``differing_share`` (new-token positions that differ)."""
    rows = []
    for fp32 in (r for r in results if r["precision"] == "fp32"):
        bf16 = next((r for r in results if r["name"] == fp32["name"] and r["precision"] == "bf16"), None)
        if bf16 is None:
            continue
        pairs = list(zip(ids_by[fp32["name"], "fp32"], ids_by[fp32["name"], "bf16"]))
        positions = sum(max(len(a), len(b)) for a, b in pairs)
        differing = sum(sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b)) for a, b in pairs)
        rows.append({"name": fp32["name"], "method": fp32["method"], "fp32_tokens_per_s": fp32["tokens_per_s"],
                     "bf16_tokens_per_s": bf16["tokens_per_s"],
                     "speedup": round(bf16["tokens_per_s"] / fp32["tokens_per_s"], 2),
                     "same_tokens": differing == 0, "differing_share": round(differing / max(positions, 1), 4),
                     "prompts": [{"prompt": p["prompt"], "same_tokens": a == b,
                                  "first_difference": first_difference(a, b)} for p, (a, b) in zip(fp32["prompts"], pairs)]})
    return rows


def _cache_comparison(chat, label, prompts, new_tokens, cached, cached_ids, precision: str = "fp32") -> dict:
    """The uncached reference path on the same prompts; the cached figures come from the method's row."""
    print(f"fatune bench generate: {label} without the KV cache (the reference path) ...", flush=True)
    rows = []
    for (name, prompt), row, ids in zip(prompts, cached, cached_ids):
        uncached_s, uncached_ids = timed(chat, prompt, new_tokens, use_cache=False, precision=precision)
        rows.append({"prompt": name, "prompt_tokens": row["prompt_tokens"], "cached_seconds": row["seconds"],
                     "no_cache_seconds": round(uncached_s, 3), "speedup": round(uncached_s / row["seconds"], 2),
                     "same_tokens": ids == uncached_ids})
    cached_total = sum(r["cached_seconds"] for r in rows)
    uncached_total = sum(r["no_cache_seconds"] for r in rows)
    tokens = new_tokens * len(rows)
    return {"model": label, "precision": precision, "prompts": rows,
            "cached_tokens_per_s": round(tokens / cached_total, 2),
            "no_cache_tokens_per_s": round(tokens / uncached_total, 2),
            "speedup_total": round(uncached_total / cached_total, 2), "same_tokens": all(r["same_tokens"] for r in rows)}


def format_report(report: dict) -> str:
    shown = report.get("precision", "fp32") != "fp32"  # the fp32-only table keeps its columns
    methods = [[r["name"], *([r["precision"]] if shown else []), r["new_tokens"], r["seconds"], r["tokens_per_s"],
                r["same_tokens_as_base"], r["load_seconds"]] for r in report["methods"]]
    headers = ["method", *(["precision"] if shown else []), "new tokens", "seconds", "tokens/s", "same tokens as base",
               "load s"]
    lines = ["", f"fatune bench generate: {report['model']}, greedy, {report['new_tokens_per_prompt']} new tokens per "
             f"prompt, one prompt at a time; prompts: {', '.join(p['name'] for p in report['prompts'])}", "",
             format_table(headers, methods)]
    compare = report["ptuning_cache"]
    if compare:
        rows = [[r["prompt"], r["prompt_tokens"], r["cached_seconds"], r["no_cache_seconds"], f"{r['speedup']:.1f}x",
                 r["same_tokens"]] for r in compare["prompts"]]
        rows.append(["all", None, round(sum(r["cached_seconds"] for r in compare["prompts"]), 2),
                     round(sum(r["no_cache_seconds"] for r in compare["prompts"]), 2),
                     f"{compare['speedup_total']:.1f}x", compare["same_tokens"]])
        lines += ["", f"P-Tuning ({compare['model']}): fatune's cached path vs the uncached reference (--no-cache)", "",
                  format_table(["prompt", "prompt tokens", "cached s", "--no-cache s", "speedup", "same tokens"], rows)]
    if report.get("precision_compare"):
        rows = [[r["name"], r["fp32_tokens_per_s"], r["bf16_tokens_per_s"], f"{r['speedup']:.2f}x", r["same_tokens"],
                 f"{r['differing_share']:.1%}", ", ".join(str(p["first_difference"]) for p in r["prompts"]
                                                          if p["first_difference"] is not None) or None]
                for r in report["precision_compare"]]
        lines += ["", "bf16 (bf16 weights, bf16 autocast) vs fp32, the same prompts and greedy decoding", "",
                  format_table(["method", "fp32 tokens/s", "bf16 tokens/s", "speedup", "same tokens",
                                "tokens differing", "first difference at"], rows)]
    lines += ["", f"machine: {report['machine']}; torch {report['torch']} ({report['threads']} threads), "
              f"transformers {report['transformers']}, peft {report['peft']}"]
    return "\n".join(lines)
