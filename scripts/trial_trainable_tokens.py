"""Trial: embed_head ``rows=persian`` through its own hooks vs PEFT's ``TrainableTokens`` (issue 15).

Both train only a subset of rows of the tied embedding / LM head matrix, each through one small
``(rows x hidden)`` parameter that holds the rows' values (not deltas), so with the same optimizer they
should take the same steps. This script checks that and measures what each costs:

1. **Results** (tiny random models, vocab 8,192, AdamW lr 1e-2 with weight decay 0.1, 5 steps): per-step
   losses and the merged matrices of the hooks (``fatune.methods.embed_head``) vs TrainableTokens
   (``peft.get_peft_model(model, TrainableTokensConfig(...))``), for a tied Gemma 3 (fp32, and a bf16 base
   with fp32 rows under autocast), an untied Gemma 2, and each with the fused LM head
   (``fatune.training.head``): the hooks through ``head.install`` (what ``train.fused_head`` does),
   TrainableTokens fed the way ``head.output_weight`` feeds it PEFT's chat tokens. Gradient checkpointing
   must not change TrainableTokens' gradient.
2. **final/**: the TrainableTokens model merged (``merge_and_unload``) and saved with ``save_pretrained``
   must reload with plain transformers (no missing or unexpected keys, still tied, same logits); the
   adapter a checkpoint would hold is reported by size.
3. **Memory and speed**: a random Gemma 3 whose vocabulary is large for its width (262,144 x 256, 2
   layers) trains ``--steps`` steps of 128 tokens on 8,332 rows (Gemma 3's Persian count) in child
   processes, arms alternating, ``--repeats`` times. Each child reports the growth of its peak RSS over
   its resident size after the model was built (``/proc/self/clear_refs`` resets the peak; glibc's
   ``MALLOC_MMAP_THRESHOLD_`` is fixed so freed large blocks leave RSS) and the median step time
   (forward, backward, AdamW; the first step, which creates AdamW's state, is reported apart), in wall
   seconds and in CPU seconds (``process_time``: with one thread, what the step cost even when other
   processes share the core).

Arms: ``hooks`` (the model's own loss over full logits: ``train.fused_head=false``, and what the fused
head's fallback gave before it took embed_head's rows), ``hooks+fused`` (``head.install``: the rows
spliced into the head's weight, as ``train.fused_head`` trains them now), ``peft`` (TrainableTokens, own
loss; also what ``head.why_not`` leaves it, since the head is then a ``TrainableTokensLayer``) and
``peft+fused`` (TrainableTokens fed to the fused head by hand). ``--arms`` picks some; the table gives
each arm's largest per-step loss gap to the first arm's.

Run (about 2.5 CPU-minutes on one core; longer in wall time when other processes share it)::

    taskset -c 1 nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src python3 scripts/trial_trainable_tokens.py \\
        [--repeats 3] [--steps 3] [--arms hooks,hooks+fused] [--skip-results] [--out trial.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch

ARMS = ("hooks", "peft", "hooks+fused", "peft+fused")
ROW_SHARE = 8332 / 262144  # Gemma 3's Persian rows (persian_token_ids) over its vocabulary


def make_model(vocab: int, hidden: int, family: str = "gemma3", tied: bool = True, seed: int = 0):
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

    shape = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, sliding_window=16,
                 pad_token_id=0, eos_token_id=1, bos_token_id=2, attn_implementation="eager",
                 tie_word_embeddings=tied)
    torch.manual_seed(seed)
    if family == "gemma3":
        return Gemma3ForCausalLM(Gemma3TextConfig(**shape)).eval()
    return Gemma2ForCausalLM(Gemma2Config(**shape)).eval()


def rows_and_batch(vocab: int, tokens: int, seed: int = 0):
    """Sorted trained row ids (Gemma 3's share of the vocabulary) and one row of ``tokens`` ids, half of
    them trained rows, so both the embedding side and the head side of the trained rows get gradients."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randperm(vocab - 3, generator=generator)[:max(8, round(vocab * ROW_SHARE))].add(3).sort().values
    picks = torch.randint(0, len(ids), (tokens // 2,), generator=generator)
    others = torch.randint(3, vocab, (tokens - tokens // 2,), generator=generator)
    sequence = torch.cat([ids[picks], others])[torch.randperm(tokens, generator=generator)].unsqueeze(0)
    return ids.tolist(), {"input_ids": sequence, "labels": sequence.clone()}


def apply_arm(model, arm: str, ids: list[int], tmp: Path):
    if arm.startswith("hooks"):
        from fatune.methods import embed_head
        from fatune.training import head

        path = tmp / "rows.txt"
        path.write_text("\n".join(map(str, ids)))
        model = embed_head.apply(model, SimpleNamespace(rows=str(path)))
        if arm.endswith("+fused") and not head.install(model):
            raise SystemExit(f"training.head declines the hooked model: {head.why_not(model)}")
        return model
    from peft import TrainableTokensConfig, get_peft_model

    targets = ["embed_tokens"] if model.config.tie_word_embeddings else ["embed_tokens", "lm_head"]
    return get_peft_model(model, TrainableTokensConfig(token_indices=list(ids), target_modules=targets))


def peft_fused_loss(model, batch):
    """TrainableTokens through the fused head, by hand (``training.head`` declines its layer): the body, then
    the fused head scoring with a spliced no-grad copy of the matrix and taking the rows' gradient apart."""
    from fatune.training.head import fused_head_loss_sum

    lm = model.get_base_model()
    hidden = lm.model(input_ids=batch["input_ids"]).last_hidden_state
    layer = lm.get_output_embeddings()  # a TrainableTokensLayer, tied to the embedding's
    with torch.no_grad():
        weight = layer.get_merged_weights(["default"])
    rows = (torch.as_tensor(layer.token_indices["default"]), layer.trainable_tokens_delta["default"])
    total, count = fused_head_loss_sum(hidden, weight, batch["labels"], lm.config.final_logit_softcapping,
                                       None, rows)
    return total / count


def loss_of(model, batch, arm):
    if arm == "peft+fused":
        return peft_fused_loss(model, batch)
    return model(**batch, **({"fused_head_loss": True} if arm == "hooks+fused" else {})).loss


def merged(model, arm):
    """The plain HF model after training (what save_final writes to final/)."""
    if arm.startswith("peft"):
        return model.merge_and_unload()
    from fatune.methods import embed_head

    return embed_head.merge(model)


def train(arm, batch, ids, steps, tmp, bf16=False, **shape):
    model = apply_arm(make_model(**shape), arm, ids, tmp)
    if bf16:  # as training.precision does: frozen base in bf16, trained rows fp32, forward under autocast
        model.to(torch.bfloat16)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", torch.bfloat16) if bf16 else nullcontext():
            loss = loss_of(model, batch, arm)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    final = merged(model, arm).eval()
    head = final.get_output_embeddings().weight
    return SimpleNamespace(losses=losses, embed=final.get_input_embeddings().weight.detach().float(),
                           head=head.detach().float(), tied=head is final.get_input_embeddings().weight,
                           trainable=sum(p.numel() for p in params), model=final)


def compare(a, b):
    return {"max_loss_diff": max(abs(x - y) for x, y in zip(a.losses, b.losses)),
            "max_embed_diff": (a.embed - b.embed).abs().max().item(),
            "max_head_diff": (a.head - b.head).abs().max().item(),
            "both_tied": a.tied and b.tied, "same_trainable": a.trainable == b.trainable,
            "losses": [[round(x, 6) for x in a.losses], [round(y, 6) for y in b.losses]]}


def results(tmp: Path) -> dict:
    shape = dict(vocab=8192, hidden=64)
    ids, batch = rows_and_batch(8192, 64)
    out = {}
    runs = {arm: train(arm, batch, ids, 5, tmp, **shape) for arm in ARMS}
    out["gemma3 tied fp32: hooks vs peft"] = compare(runs["hooks"], runs["peft"])
    out["gemma3 tied fp32: hooks+fused vs peft+fused"] = compare(runs["hooks+fused"], runs["peft+fused"])
    out["gemma3 tied fp32: hooks vs peft+fused"] = compare(runs["hooks"], runs["peft+fused"])
    base = make_model(**shape).get_input_embeddings().weight.detach()
    frozen = torch.ones(8192, dtype=torch.bool)
    frozen[ids] = False
    out["frozen rows bit-identical (hooks, peft)"] = [torch.equal(runs[a].embed[frozen], base[frozen])
                                                      for a in ("hooks", "peft")]
    bf16 = {arm: train(arm, batch, ids, 5, tmp, bf16=True, **shape) for arm in ("hooks", "peft")}
    out["gemma3 tied bf16 base, fp32 rows: hooks vs peft"] = compare(bf16["hooks"], bf16["peft"])
    # Which tracks fp32 closer: the hooks sum the embedding side's row gradients in fp32, TrainableTokens in
    # bf16 (the dense gradient of its bf16 copy of the matrix).
    out["bf16 vs fp32 of the same arm: max loss diff (hooks, peft)"] = [
        max(abs(x - y) for x, y in zip(bf16[arm].losses, runs[arm].losses)) for arm in ("hooks", "peft")]
    untied = {arm: train(arm, batch, ids, 5, tmp, family="gemma2", tied=False, **shape) for arm in ("hooks", "peft")}
    out["gemma2 untied fp32: hooks vs peft"] = compare(untied["hooks"], untied["peft"])

    grads = []  # gradient checkpointing must not change TrainableTokens' gradient
    for checkpointing in (False, True):
        model = apply_arm(make_model(**shape), "peft", ids, tmp).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**batch).loss.backward()
        grads.append(model.base_model.model.model.embed_tokens.trainable_tokens_delta["default"].grad)
    out["peft gradient checkpointing: max grad diff"] = (grads[0] - grads[1]).abs().max().item()
    out["final/"] = final_check(runs["peft"].model, batch, tmp, ids, shape)
    return out


def final_check(model, batch, tmp: Path, ids, shape) -> dict:
    """Merged TrainableTokens saved as final/ is: reload it with plain transformers."""
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp / "final")
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp / "final", output_loading_info=True)
    with torch.no_grad():
        diff = (loaded.eval()(**batch).logits - model(**batch).logits).abs().max().item()
    peft_model = apply_arm(make_model(**shape), "peft", ids, tmp)
    peft_model.save_pretrained(tmp / "adapter")
    return {"missing_keys": sorted(info["missing_keys"]), "unexpected_keys": sorted(info["unexpected_keys"]),
            "tied_after_reload": loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight,
            "max_logit_diff": diff, "files": sorted(p.name for p in (tmp / "final").iterdir()),
            "checkpoint_adapter_files": {p.name: p.stat().st_size for p in (tmp / "adapter").iterdir()}}


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def child(arm: str, steps: int, vocab: int, hidden: int, tokens: int) -> dict:
    import fatune.training.head  # noqa: F401  imported before the peak is reset: its code is resident memory too

    with tempfile.TemporaryDirectory() as tmp:
        ids, batch = rows_and_batch(vocab, tokens)
        model = apply_arm(make_model(vocab, hidden), arm, ids, Path(tmp)).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        start_rss = _kib("VmRSS")
        seconds, cpu, losses = [], [], []
        for _ in range(steps):
            start, start_cpu = time.perf_counter(), time.process_time()
            loss = loss_of(model, batch, arm)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seconds.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            losses.append(loss.item())
        return {"arm": arm, "model_rss_mib": start_rss / 1024, "step_peak_mib": (_kib("VmHWM") - start_rss) / 1024,
                "first_step_s": seconds[0], "median_step_s": statistics.median(seconds[1:]),
                "median_step_cpu_s": statistics.median(cpu[1:]), "losses": losses}


def measure(repeats: int, steps: int, vocab: int, hidden: int, tokens: int, arms=ARMS) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    runs = {arm: [] for arm in arms}
    for repeat in range(repeats):
        order = arms if repeat % 2 == 0 else arms[::-1]  # alternate, so drift hits every arm alike
        for arm in order:
            done = subprocess.run([sys.executable, __file__, "--child", arm, "--steps", str(steps), "--vocab",
                                   str(vocab), "--hidden", str(hidden), "--tokens", str(tokens)], env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"the {arm} child failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
            runs[arm].append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = {}
    for arm, rows in runs.items():
        table[arm] = {"model_rss_mib": round(statistics.median(r["model_rss_mib"] for r in rows)),
                      "step_peak_mib": [round(r["step_peak_mib"]) for r in rows],
                      "first_step_s": [round(r["first_step_s"], 3) for r in rows],
                      "median_step_s": [round(r["median_step_s"], 3) for r in rows],
                      "median_step_cpu_s": [round(r["median_step_cpu_s"], 3) for r in rows],
                      "losses_equal_across_repeats": all(r["losses"] == rows[0]["losses"] for r in rows),
                      f"max_loss_diff_vs_{arms[0]}": max(abs(x - y) for x, y in
                                                         zip(rows[0]["losses"], runs[arms[0]][0]["losses"]))}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="0: results only")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated, measured in this order")
    parser.add_argument("--child", choices=ARMS)
    parser.add_argument("--skip-results", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.vocab, args.hidden, args.tokens)))
        return
    import peft
    import transformers

    report = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "peft": peft.__version__},
              "memory_speed_shape": {"vocab": args.vocab, "hidden": args.hidden, "tokens": args.tokens,
                                     "steps": args.steps, "repeats": args.repeats}}
    if not args.skip_results:
        with tempfile.TemporaryDirectory() as tmp:
            report["results"] = results(Path(tmp))
        print(json.dumps(report["results"], indent=1), flush=True)
    if args.repeats:
        arms = tuple(args.arms.split(","))
        if not set(arms) <= set(ARMS):
            parser.error(f"--arms: choose from {', '.join(ARMS)}")
        report["load_average_before"] = os.getloadavg()
        report["memory_speed"] = measure(args.repeats, args.steps, args.vocab, args.hidden, args.tokens, arms)
        report["load_average_after"] = os.getloadavg()
        print(json.dumps(report["memory_speed"], indent=1))
        print("load average before/after:", report["load_average_before"], report["load_average_after"])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
