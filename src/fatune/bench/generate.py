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

Prompts (``--prompts``, comma-separated names, or a prompts file in any source format): ``short chat``
(16 tokens), ``seed translation`` (the seed's EN->FA prompt, ~160 tokens, from
``SHARED/seed/prompts.jsonl``), ``FarsTail NLI`` (~156 tokens, ``SHARED/data/farstail/val.tsv``) and
``long reading`` (three long user turns of the bundled sample, ~430 tokens). ``SHARED`` is
``--shared`` (default ``../shared``, beside the repo).

    fatune bench generate                                        # defaults: about 2.5 minutes on 2 cores
    fatune bench generate --methods ptuning --new-tokens 128 --prompts "short chat,seed translation,FarsTail NLI,long reading"
    fatune bench generate --methods ptuning,base --shape gemma3-1b --prompts "short chat"
    fatune bench generate --run runs/demo/ptuning --run runs/demo/lora --out gen.json
"""

from __future__ import annotations

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
from fatune.errors import FatuneError

DEFAULT_MODEL = "pypi:gemma-3-270m"
METHODS = ("ptuning", "lora", "qlora", "embed_head", "base")
PROMPTS = ("short chat", "seed translation", "FarsTail NLI", "long reading")
DEFAULT_PROMPTS = "short chat,seed translation"
DEFAULT_NEW_TOKENS = 64
SHAPES = {"gemma3-1b": "random Gemma 3 1B-shaped model"}


# -- prompts ---------------------------------------------------------------------------------------------
def _builtin_prompt(name: str, shared: Path) -> list[dict]:
    from fatune.data import load_conversations

    if name == "short chat":
        return [{"role": "user", "content": "سلام. تو کی هستی؟"}]
    if name == "seed translation":  # the last line of the seed's prompts file, its system prompt's role fixed
        file = shared / "seed" / "prompts.jsonl"
        _need(file, name)
        messages = json.loads(file.read_text(encoding="utf-8").splitlines()[-1])["messages"]
        messages[0]["role"] = "system"
        return messages
    if name == "FarsTail NLI":
        file = shared / "data" / "farstail" / "val.tsv"
        _need(file, name)
        return next(load_conversations(file)).messages[:-1]
    # Persian SlimOrca prompts are often long (a system prompt and a passage): the sample's three longest
    # user turns as one reading task, about 430 tokens.
    users = sorted((m["content"] for c in load_conversations("fatune:sample") for m in c.messages
                    if m["role"] == "user"), key=len)[-3:]
    return [{"role": "system", "content": "شما یک دستیار مفید هستید. با دقت بخوانید و کامل پاسخ دهید."},
            {"role": "user", "content": "\n\n".join(users)}]


def _need(file: Path, prompt: str) -> None:
    if not file.exists():
        raise FatuneError(f"the {prompt!r} prompt needs {file}; pass --shared DIR (the folder with seed/ and "
                          f"data/farstail/) or other --prompts ({', '.join(PROMPTS)}, or a prompts file)")


def load_prompts(spec: str, shared: str | Path = "../shared") -> list[tuple[str, list[dict]]]:
    """``[(name, messages)]`` for ``spec``: comma-separated built-in names, or a prompts file."""
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
    return [(name, _builtin_prompt(name, Path(shared).expanduser())) for name in names]


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


def untrained(method: str, model: str = DEFAULT_MODEL, template: str = "gemma", shape: str | None = None):
    """A ``ChatModel`` of ``model`` with ``method`` applied in memory, untrained (``base``: none)."""
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
        loaded = Loaded(gemma3_1b_shaped(), tokenizer, template)
    else:
        try:
            loaded = load_artifact(model, template=template, load_in_4bit=method == "qlora")
        except ImportError as error:
            raise FatuneError(f"{method}: {error}") from None
    if method != "base":
        cfg = MethodConfig(name=method, **({"rows": "persian"} if method == "embed_head" else {}))
        torch.manual_seed(0)  # the same prompt encoder / LoRA initialization every time
        applied = get_method(method).apply(loaded.model, cfg, tokenizer=loaded.tokenizer).eval()
        loaded = dataclasses.replace(loaded, model=applied, method=method)
    return ChatModel(loaded)


def from_run(run: str):
    from fatune.generation import load

    return load(run)


# -- timing ----------------------------------------------------------------------------------------------
def timed(model, prompt, new_tokens: int, use_cache: bool = True) -> tuple[float, list[int]]:
    """Seconds to generate exactly ``new_tokens`` tokens for one prompt, and the tokens."""
    start = time.perf_counter()
    result = model.generate([prompt], use_cache=use_cache, max_new_tokens=new_tokens, min_new_tokens=new_tokens)[0]
    return time.perf_counter() - start, result["output_ids"]


@dataclasses.dataclass
class Target:
    label: str
    method: str
    source: str  # "untrained" or the run dir
    build: Callable


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
    targets = [Target(m, m, "untrained", lambda m=m: untrained(m, model, template, shape)) for m in dict.fromkeys(chosen)]
    for run in runs:
        if not Path(run).expanduser().exists():
            raise FatuneError(f"--run {run}: no such run directory")
        meta_file = next((p for p in (Path(run) / "final" / "fatune.json", Path(run) / "fatune.json") if p.exists()), None)
        method = json.loads(meta_file.read_text()).get("method", "?") if meta_file else "?"
        label = f"{method} ({Path(run).name})"
        if any(t.label == label for t in targets):  # two runs with the same dir name: name them in full
            label = f"{method} ({run})"
        targets.append(Target(label, method, str(run), lambda run=run: from_run(run)))
    if not targets:
        raise FatuneError("nothing to time: give --methods and/or --run")
    return targets


def bench_generate(methods: str | None = None, runs: Sequence[str] = (), model: str = DEFAULT_MODEL,
                   new_tokens: int = DEFAULT_NEW_TOKENS, prompts: str = DEFAULT_PROMPTS, shared: str | Path = "../shared",
                   template: str = "gemma", shape: str | None = None, cache_compare: bool = True,
                   out: str | Path | None = None, command: str | None = None) -> dict:
    """Time every target (see the module docstring), print the tables, write the JSON report to ``out``."""
    import torch

    positive(new_tokens, "--new-tokens")
    if shape and shape not in SHAPES:
        raise FatuneError(f"--shape: unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    targets = plan(methods, runs, model, template, shape)
    chosen_prompts = load_prompts(prompts, shared)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one "Loading weights" bar per model drowns the table

    results, compare, ids_by_label = [], None, {}
    for target in targets:
        print(f"fatune bench generate: {target.label} ...", flush=True)
        began = time.perf_counter()
        chat = target.build()
        load_s = time.perf_counter() - began
        timed(chat, chosen_prompts[0][1], 4)  # warm up kernels and caches
        per_prompt, ids, total_s = [], [], 0.0
        for name, prompt in chosen_prompts:
            seconds, output = timed(chat, prompt, new_tokens)
            ids.append(output)
            total_s += seconds
            per_prompt.append({"prompt": name, "prompt_tokens": len(chat.prompt_ids(prompt)),
                               "seconds": round(seconds, 3), "new_tokens": len(output),
                               "tokens_per_s": round(len(output) / seconds, 2)})
        ids_by_label[target.label] = ids
        tokens = sum(p["new_tokens"] for p in per_prompt)
        results.append({"name": target.label, "method": target.method, "source": target.source,
                        "load_seconds": round(load_s, 1), "seconds": round(total_s, 2), "new_tokens": tokens,
                        "tokens_per_s": round(tokens / total_s, 2), "prompts": per_prompt})
        if cache_compare and compare is None and chat.loaded.is_prompt_learning:
            compare = _cache_comparison(chat, target.label, chosen_prompts, new_tokens, per_prompt, ids)
        del chat
        gc.collect()

    base_ids = ids_by_label.get("base") if any(t.label == "base" and t.source == "untrained" for t in targets) else None
    for result in results:
        same = None
        if base_ids is not None and result["source"] == "untrained" and result["name"] != "base":
            same = ids_by_label[result["name"]] == base_ids
        result["same_tokens_as_base"] = same

    report = {"bench": "generate", "command": command or command_line(), **environment(),
              "model": SHAPES[shape] if shape else model, "template": template,
              "new_tokens_per_prompt": new_tokens, "batch_size": 1, "preset": "greedy",
              "prompts": [{"name": n, "messages": len(p)} for n, p in chosen_prompts],
              "threads": torch.get_num_threads(), "methods": results, "ptuning_cache": compare}
    print(format_report(report))
    write_report(report, out)
    return report


def _cache_comparison(chat, label, prompts, new_tokens, cached, cached_ids) -> dict:
    """The uncached reference path on the same prompts; the cached figures come from the method's row."""
    print(f"fatune bench generate: {label} without the KV cache (the reference path) ...", flush=True)
    rows = []
    for (name, prompt), row, ids in zip(prompts, cached, cached_ids):
        uncached_s, uncached_ids = timed(chat, prompt, new_tokens, use_cache=False)
        rows.append({"prompt": name, "prompt_tokens": row["prompt_tokens"], "cached_seconds": row["seconds"],
                     "no_cache_seconds": round(uncached_s, 3), "speedup": round(uncached_s / row["seconds"], 2),
                     "same_tokens": ids == uncached_ids})
    cached_total = sum(r["cached_seconds"] for r in rows)
    uncached_total = sum(r["no_cache_seconds"] for r in rows)
    tokens = new_tokens * len(rows)
    return {"model": label, "prompts": rows, "cached_tokens_per_s": round(tokens / cached_total, 2),
            "no_cache_tokens_per_s": round(tokens / uncached_total, 2),
            "speedup_total": round(uncached_total / cached_total, 2), "same_tokens": all(r["same_tokens"] for r in rows)}


def format_report(report: dict) -> str:
    methods = [[r["name"], r["new_tokens"], r["seconds"], r["tokens_per_s"], r["same_tokens_as_base"],
                r["load_seconds"]] for r in report["methods"]]
    lines = ["", f"fatune bench generate: {report['model']}, greedy, {report['new_tokens_per_prompt']} new tokens per "
             f"prompt, one prompt at a time; prompts: {', '.join(p['name'] for p in report['prompts'])}", "",
             format_table(["method", "new tokens", "seconds", "tokens/s", "same tokens as base", "load s"], methods)]
    compare = report["ptuning_cache"]
    if compare:
        rows = [[r["prompt"], r["prompt_tokens"], r["cached_seconds"], r["no_cache_seconds"], f"{r['speedup']:.1f}x",
                 r["same_tokens"]] for r in compare["prompts"]]
        rows.append(["all", None, round(sum(r["cached_seconds"] for r in compare["prompts"]), 2),
                     round(sum(r["no_cache_seconds"] for r in compare["prompts"]), 2),
                     f"{compare['speedup_total']:.1f}x", compare["same_tokens"]])
        lines += ["", f"P-Tuning ({compare['model']}): fatune's cached path vs the uncached reference (--no-cache)", "",
                  format_table(["prompt", "prompt tokens", "cached s", "--no-cache s", "speedup", "same tokens"], rows)]
    lines += ["", f"machine: {report['machine']}; torch {report['torch']} ({report['threads']} threads), "
              f"transformers {report['transformers']}, peft {report['peft']}"]
    return "\n".join(lines)
