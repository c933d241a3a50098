"""Evaluation tasks. Each takes a ``ChatModel`` and returns a JSON-ready dict of metrics.

* ``loss``: held-out loss, perplexity and bits per UTF-8 byte on assistant tokens (the run's own
  validation split, or a given file). Bits per byte compares models with different tokenizers. Scored
  through the training's fused LM head where it applies, so ``(tokens x vocab)`` logits never exist.
* ``fidelity``: answers to a suite of Persian prompts, scored for Persian script and for the ways a
  Persian share can be gamed (echoing the prompt, degenerate repetition, empty answers).
* ``farstail``: FarsTail NLI in the seed's chat format, scored by option log-likelihood.
* ``mc``: any multiple-choice JSONL (``question``, ``candidates``, 1-based ``answer``, optional ``system``).
* ``sib200``: SIB-200 topic classification, scored by the log-likelihood of the seven Persian labels.
* ``qa`` and ``translate`` generate; they live in ``eval.qa`` and ``eval.translate``.

Every result keeps ``item_ids`` (stable ids: the line of a task file, a SQuAD question id, the index in
the fidelity suite or the validation split) and ``per_item`` (``{metric: [value per item]}``), from which
``eval.stats.gains`` computes paired gains between two models evaluated on the same items. Option tasks
report ``acc_norm`` (log-likelihood per UTF-8 byte) next to ``accuracy``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fatune.artifact import CHECKPOINTS_DIR
from fatune.data.render import IGNORE, render_batch, trained_spans, truncate
from fatune.data.records import local_path
from fatune.data.sources import parse_source
from fatune.errors import DataError, FatuneError
from fatune.eval import metrics
from fatune.eval.choice import option_loglikelihoods, target_logprobs

FARSTAIL_TEST_URL = "https://raw.githubusercontent.com/dml-qom/FarsTail/master/data/Test-word.csv"


def run_config_of(run_dir: Path) -> Path | None:
    """The ``config.yaml`` of a run dir, or of the run a checkpoint belongs to."""
    for candidate in (run_dir / "config.yaml", run_dir.parent.parent / "config.yaml"):
        if candidate.exists() and (candidate.parent == run_dir or run_dir.parent.name == CHECKPOINTS_DIR):
            return candidate
    return None


def spread(items: list, limit: int | None) -> list:
    """At most ``limit`` items, evenly spaced over the whole list and in its order. Task files are often
    sorted (SIB-200's test split by topic, PQuAD by article), so the first N would test one topic or one
    article; evenly spaced picks cover the file, and stay the same items for every model (no RNG)."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[(i * len(items)) // limit] for i in range(limit)]


def default_suite() -> Path:
    return Path(str(resources.files("fatune.eval") / "suites" / "fidelity.jsonl"))


# -- loss ------------------------------------------------------------------------------------------
def _row_id(position, input_ids: list[int]) -> str:
    """``POSITION:HASH``: the row's line or index, and a digest of its tokens. The index alone made rows of two
    runs' different validation splits look like the same items, so ``compare`` paired the base model's loss on
    one run's split with another run's loss on its own (found comparing two recipes' runs); with the digest,
    rows pair only where they hold the same tokens."""
    import hashlib

    digest = hashlib.blake2b(json.dumps(input_ids).encode(), digest_size=6).hexdigest()
    return f"{position}:{digest}"


def _validation_rows(chat_model, run_dir: Path | None, path: str | None, limit: int | None) -> list[dict]:
    """Rows to score, each with an ``id`` (``_row_id``): the record's line in ``path``, else the row's
    validation index, with a digest of the row's tokens."""
    if path:
        from fatune.data import load_conversations

        conversations = spread(list(load_conversations(path, normalize=chat_model.loaded.normalize)), limit)
        samples = render_batch(conversations, chat_model.tokenizer, chat_model.template)
        rows = [(c.line, truncate(s, 2048)) for c, s in zip(conversations, samples)]
        return [{"id": _row_id(line, r["input_ids"]), "input_ids": r["input_ids"], "labels": r["labels"],
                 "position_ids": list(range(len(r["input_ids"])))} for line, r in rows if r is not None]
    config_file = run_config_of(run_dir) if run_dir is not None else None
    if config_file is None:
        raise FatuneError("loss needs a fatune run dir (its validation split) or loss:PATH")
    from fatune.config import load_config
    from fatune.data.prepare import prepare

    val = prepare(load_config(config_file), chat_model.tokenizer).val
    return [{**val[i], "id": _row_id(i, val[i]["input_ids"])}
            for i in range(len(val) if limit is None else min(limit, len(val)))]


def fused_head_for(model) -> bool:
    """Let ``model`` score held-out loss with the fused LM head (``training.head``): ``(tokens x vocab)``
    logits never exist, which with Gemma's 262k vocabulary is most of the memory of a long row. Installed
    under any PEFT wrapper, whose forward passes ``fused_head_loss`` on (P-Tuning prepends its virtual
    tokens and pads the labels first). ``False`` where the head declines (``training.head.why_not``, e.g. a
    model type it does not cover): full logits then."""
    from transformers.trainer_utils import unwrap_peft_model

    from fatune.training import head

    return head.install(unwrap_peft_model(model))


def row_nll(model, ids: torch.Tensor, labels: torch.Tensor, fused: bool, **kwargs) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) of the labelled tokens of one row, and their count."""
    labels = labels.clone()
    labels[:, 0] = IGNORE  # nothing in the row predicts it; P-Tuning's virtual tokens would, with fused labels
    count = int((labels[:, 1:] != IGNORE).sum())
    with torch.no_grad():
        if fused:  # num_items_in_batch=1: the head's summed loss, not its mean
            output = model(input_ids=ids, labels=labels, fused_head_loss=True, num_items_in_batch=1, use_cache=False,
                           **kwargs)
            return output.loss.item(), count
        logits = model(input_ids=ids, use_cache=False, **kwargs).logits[:, -ids.shape[1]:]
    picked, _ = target_logprobs(logits[0, :-1], labels[0, 1:])
    return -picked.sum().item(), count


def loss_task(chat_model, run_dir: Path | None = None, path: str | None = None, limit: int | None = None) -> dict:
    rows = _validation_rows(chat_model, run_dir, path, limit)
    if not rows:
        raise FatuneError("loss: the validation data is empty")
    model, tokens, row_nlls, row_bytes = chat_model.model, 0, [], []
    fused = fused_head_for(model)
    packed_ok = not chat_model.loaded.is_prompt_learning  # PEFT prompt learning ignores position_ids
    for row in tqdm(rows, desc="loss", leave=False):
        ids = torch.tensor([row["input_ids"]], device=model.device)
        kwargs = {"position_ids": torch.tensor([row["position_ids"]], device=model.device)} if packed_ok else {}
        with chat_model.loaded.autocast():  # a bf16 run's model: the fused path bypasses its autocast forward
            row_sum, row_tokens = row_nll(model, ids, torch.tensor([row["labels"]], device=model.device), fused,
                                          **kwargs)
        tokens += row_tokens
        row_nlls.append(row_sum)
        row_bytes.append(sum(len(chat_model.tokenizer.decode(span, skip_special_tokens=True).encode("utf-8"))
                             for span in trained_spans(row)))
    nll, text_bytes = sum(row_nlls), sum(row_bytes)
    mean = nll / max(tokens, 1)
    # Per row the summed nll (nats) and text bytes: bits per byte is a ratio of sums, so gains resample rows.
    return {"loss": round(mean, 5), "perplexity": round(metrics.perplexity(mean), 3),
            "bits_per_byte": round(metrics.bits_per_byte(nll, max(text_bytes, 1)), 5), "tokens": tokens,
            "bytes": text_bytes, "rows": len(rows), "source": path or str(run_config_of(run_dir)),
            "item_ids": [row["id"] for row in rows],
            "per_item": {"nll": [round(v, 4) for v in row_nlls], "bytes": row_bytes}}


# -- fidelity --------------------------------------------------------------------------------------
def greedy_answers(chat_model, prompts: list[list[dict]], max_new_tokens: int, batch_size: int,
                   desc: str) -> tuple[list[str], list[bool]]:
    """Greedy answers to ``prompts`` (message lists ending with the user's turn), and for each whether it
    stopped at ``max_new_tokens`` rather than at its end of turn."""
    results = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        results += chat_model.generate(prompts[start:start + batch_size], "greedy", batch_size=batch_size,
                                       max_new_tokens=max_new_tokens)
    return [r["messages"][-1]["content"] for r in results], [r["stop_reason"] == "length" for r in results]


def task_file(spec: str) -> tuple[Path, slice | None]:
    """The local file and ``#START:END`` selection a task path names (``fatune:tasks/...`` resolved)."""
    path, rows = parse_source(spec)
    return local_path(path), rows


def fidelity_task(chat_model, path: str | None = None, limit: int | None = None, max_new_tokens: int = 128,
                  batch_size: int = 8) -> dict:
    suite, rows = task_file(path) if path else (default_suite(), None)
    lines = [line for line in suite.read_text(encoding="utf-8").splitlines() if line.strip()]
    # The suite is short and ordered by category on purpose: --limit N keeps its first N prompts.
    indices = list(range(len(lines)))[rows or slice(None)][:limit]
    items = [json.loads(lines[i]) for i in indices]
    prompts = [item["messages"] for item in items]
    answers, hit_limit = greedy_answers(chat_model, prompts, max_new_tokens, batch_size, "fidelity")
    users = [p[-1]["content"] for p in prompts]
    summary = metrics.fidelity_summary(answers, users, hit_limit)
    flags = metrics.fidelity_flags(answers, users, hit_limit)
    lo, hi = metrics.wilson_ci(sum(flags["clean_persian"]), len(answers))
    summary["clean_persian_rate_ci95"] = [round(lo, 4), round(hi, 4)]
    summary["max_new_tokens"] = max_new_tokens
    summary["suite"] = str(suite)
    summary["samples"] = [{"category": item.get("category", ""), "prompt": user, "answer": answer}
                          for item, user, answer in zip(items, users, answers)]
    summary["item_ids"] = [str(i) for i in indices]  # the prompt's index in the suite (blank lines skipped)
    summary["per_item"] = flags
    return summary


# -- multiple choice: FarsTail, mc: and sib200: ------------------------------------------------------
def _choice_metrics(chat_model, prompts, options, gold: list[int], labels: list[str] | None,
                    batch_size: int, name: str, item_ids: list) -> dict:
    total = sum(len(o) for o in options)
    with tqdm(total=total, desc=name, leave=False) as progress:
        scores = option_loglikelihoods(chat_model, prompts, options, batch_size, progress)
    sizes = [[len(option.encode("utf-8")) for option in choices] for choices in options]
    result = metrics.choice_accuracy(scores, gold, sizes)
    result["n"] = len(gold)
    if labels is not None:
        predicted = [labels[metrics.argmax_choice(s)] for s in scores]
        result["confusion"] = metrics.confusion_matrix([labels[g] for g in gold], predicted, labels)
    result["item_ids"] = [str(i) for i in item_ids]
    result["per_item"] = result.pop("per_item")  # per-item lists last: the headline reads first in the JSON
    return result


def farstail_url() -> str:
    return FARSTAIL_TEST_URL


def _farstail_file(path: str | None) -> str | Path:
    if path:
        if not task_file(path)[0].exists():
            raise FatuneError(f"{path}: no such FarsTail file")
        return path  # with its selector, which load_conversations applies
    from fatune.models import cache_dir

    target = cache_dir() / "datasets" / "farstail-test.tsv"
    if not target.exists():
        import urllib.request

        try:
            with urllib.request.urlopen(farstail_url(), timeout=10) as response:
                data = response.read()
        except OSError as error:
            raise FatuneError(f"farstail: could not download the FarsTail test set ({error}); use the bundled "
                              "copy (farstail:fatune:tasks/farstail/test.tsv) or pass a local one as "
                              "farstail:path/to/test.tsv") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return target


def farstail_task(chat_model, path: str | None = None, limit: int | None = None, batch_size: int = 6,
                  generate: bool = True) -> dict:
    from fatune.data import load_conversations
    from fatune.data.farstail import ANSWERS

    conversations = spread(list(load_conversations(_farstail_file(path), normalize=False)), limit)
    labels = list(ANSWERS)  # e, n, c
    options = [ANSWERS[label] for label in labels]
    prompts = [c.messages[:-1] for c in conversations]
    gold = [options.index(c.messages[-1]["content"]) for c in conversations]
    result = _choice_metrics(chat_model, prompts, [options] * len(prompts), gold, labels, batch_size, "farstail",
                             [c.line for c in conversations])
    if generate:
        answers = chat_model.generate(prompts, "greedy", batch_size=8, max_new_tokens=12)
        hits = sum(a["messages"][-1]["content"].strip() == options[g] for a, g in zip(answers, gold))
        result["generated_exact_match"] = round(hits / len(prompts), 4)
    return result


def read_mc(path: str | Path, rows: slice | None = None) -> list[tuple[int, dict]]:
    """``(line, row)`` for the rows (0-based ``rows`` of the non-blank lines) of a multiple-choice JSONL,
    validated: ``question`` (str), ``candidates`` (2+ strings), ``answer`` (1-based index), optional ``system``."""
    out = []
    with open(path, encoding="utf-8") as handle:
        lines = [(number, line) for number, line in enumerate(handle, 1) if line.strip()]
    for number, line in lines[rows or slice(None)]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(str(path), number, f"not valid JSON: {error.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise DataError(str(path), number, "needs a string question", "question")
        candidates = row.get("candidates")
        if not isinstance(candidates, list) or len(candidates) < 2 or not all(isinstance(c, str) for c in candidates):
            raise DataError(str(path), number, "needs a list of at least two string candidates", "candidates")
        answer = row.get("answer")
        if not isinstance(answer, int) or not 1 <= answer <= len(candidates):
            raise DataError(str(path), number, f"answer must be a 1-based index into candidates (1..{len(candidates)})",
                            "answer")
        out.append((number, row))
    return out


def mc_task(chat_model, path: str, limit: int | None = None, batch_size: int = 6) -> dict:
    file, selection = task_file(path)
    numbered = spread(read_mc(file, selection), limit)
    rows = [row for _, row in numbered]
    prompts = [([{"role": "system", "content": r["system"]}] if r.get("system") else [])
               + [{"role": "user", "content": r["question"]}] for r in rows]
    return _choice_metrics(chat_model, prompts, [r["candidates"] for r in rows], [r["answer"] - 1 for r in rows],
                           None, batch_size, file.stem, [line for line, _ in numbered])


def sib200_task(chat_model, path: str, limit: int | None = None, batch_size: int = 6) -> dict:
    """SIB-200 topics: the log-likelihood of each of the seven Persian labels as the answer, like FarsTail."""
    from fatune.data.sib200 import LABELS_FA, read_sib200, topic_prompt

    file, selection = task_file(path)
    rows = spread(list(read_sib200(file, rows=selection)), limit)
    if not rows:
        raise FatuneError(f"{path}: no SIB-200 rows to evaluate")
    categories = list(LABELS_FA)
    options = [LABELS_FA[c] for c in categories]
    return _choice_metrics(chat_model, [topic_prompt(text) for _, text, _ in rows], [options] * len(rows),
                           [categories.index(category) for _, _, category in rows], categories, batch_size,
                           "sib200", [line for line, _, _ in rows])
