"""``fatune data inspect``: what is in a data source, and how a tokenizer and template see it.

``inspect_source`` computes the report (a plain dict, easy to test); ``format_report`` prints it.
Any source string works, task data and ``#START:END`` selectors included (``fatune:tasks/pquad/heldout.json#0:2``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from fatune.data.records import LoadStats
from fatune.data.render import IGNORE, render_batch
from fatune.data.script import letter_counts, persian_words
from fatune.data.sources import load_conversations
from fatune.data.templates import get_template

TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


def inspect_source(source: str, tokenizer=None, template: str = "auto", n_samples: int = 3,
                   skip_invalid: bool = False, purpose: str = "train", normalize: bool = False) -> dict[str, Any]:
    """Count, measure and sample a data source. Token statistics need a ``tokenizer``."""
    stats = LoadStats()
    conversations = list(load_conversations(source, purpose=purpose, skip_invalid=skip_invalid,
                                            normalize=normalize, stats=stats))
    roles, letters = Counter(), {"user": [0, 0], "assistant": [0, 0], "system": [0, 0]}
    for conversation in conversations:
        for message in conversation.messages:
            roles[message["role"]] += 1
            persian, total = letter_counts(message["content"])
            letters[message["role"]][0] += persian
            letters[message["role"]][1] += total
    report: dict[str, Any] = {
        "source": str(source), "conversations": len(conversations), "turns": dict(roles),
        "skipped": dict(stats.skipped), "first_error": dict(stats.first_error),
        "persian_share": {role: round(p / t, 4) for role, (p, t) in letters.items() if t},
    }
    groups = {c.group for c in conversations if c.group is not None}
    if groups:  # SQuAD articles: what a train/val split keeps together
        report["groups"] = len(groups)
    if tokenizer is not None and conversations:
        chat_template = get_template(template, tokenizer)
        samples = render_batch(conversations, tokenizer, chat_template)
        lengths = np.array([len(s["input_ids"]) for s in samples])
        report["template"] = chat_template.name
        report["tokens"] = {"total": int(lengths.sum()), "mean": round(float(lengths.mean()), 1),
                            **{f"p{q}": int(np.percentile(lengths, q)) for q in (0, 50, 90, 99, 100)},
                            "trained": int(sum(sum(label != IGNORE for label in s["labels"]) for s in samples))}
        report["fertility"] = _fertility(conversations, tokenizer)
        report["samples"] = [_marked(s, tokenizer) for s in samples[:n_samples]]
    else:
        report["samples"] = ["\n".join(f"[{m['role']}] {m['content']}" for m in c.messages)
                             for c in conversations[:n_samples]]
    return report


def _fertility(conversations, tokenizer, max_words: int = 200_000) -> float | None:
    """Tokens per Persian word: each word tokenized as it appears after a space in running text."""
    words = []
    for conversation in conversations:
        for message in conversation.messages:
            words += persian_words(message["content"])
        if len(words) >= max_words:
            break
    if not words:
        return None
    ids = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    return round(sum(map(len, ids)) / len(words), 3)


def _marked(sample: dict, tokenizer) -> str:
    """The rendered sample as text, with trained tokens between ⟦ and ⟧."""
    out, run, run_trained = [], [], None
    for token, label in zip(sample["input_ids"] + [None], sample["labels"] + [None]):
        trained = label is not None and label != IGNORE
        if token is None or (run and trained != run_trained):
            text = tokenizer.decode(run, skip_special_tokens=False)
            out.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if run_trained else text)
            run = []
        if token is not None:
            run.append(token)
            run_trained = trained
    return "".join(out)


def format_report(report: dict[str, Any]) -> str:
    lines = [f"source: {report['source']}", f"conversations: {report['conversations']}",
             "turns: " + ", ".join(f"{role} {n}" for role, n in sorted(report["turns"].items()))]
    if "groups" in report:
        lines.append(f"articles (kept on one side of a train/val split): {report['groups']}")
    if report["skipped"]:
        lines.append("skipped: " + ", ".join(f"{reason} {n}" for reason, n in report["skipped"].items()))
        lines += [f"  first {reason}: {message}" for reason, message in report["first_error"].items()]
    lines.append("persian-script share of letters: " +
                 ", ".join(f"{role} {share:.1%}" for role, share in report["persian_share"].items()))
    if "tokens" in report:
        t = report["tokens"]
        lines.append(f"template: {report['template']}")
        lines.append(f"tokens per conversation: mean {t['mean']}, min {t['p0']}, p50 {t['p50']}, p90 {t['p90']}, "
                     f"p99 {t['p99']}, max {t['p100']}; total {t['total']}, trained {t['trained']}")
        lines.append(f"tokens per Persian word (fertility): {report['fertility']}")
    for i, sample in enumerate(report["samples"], 1):
        marker = f"  (trained tokens between {TRAINED_OPEN} {TRAINED_CLOSE})" if "tokens" in report else ""
        lines += ["", f"--- sample {i}{marker}", sample]
    return "\n".join(lines)
