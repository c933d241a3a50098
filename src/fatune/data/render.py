"""Render conversations into token ids and labels with a shared chat template.

``render(conversation, tokenizer, template)`` returns ``{"input_ids", "labels"}`` with ``-100`` on every
position that carries no loss. By default only assistant turns are trained: each assistant turn's
content and its end-of-turn token; role headers, BOS and the newline after a turn never are.

Content and template markup are tokenized separately, exactly as generation sees them: the prompt
ends with the assistant header and the model then produces content tokens. Content is tokenized with
``split_special_tokens=True`` so a user who types ``<end_of_turn>`` cannot forge a turn boundary.
``render_batch`` tokenizes all content of many conversations in one call, which is what makes
preparing 50,000 conversations take seconds rather than minutes.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Literal, Sequence

from fatune.data.templates import ChatTemplate, Piece, get_template

IGNORE = -100
TrainOn = Literal["assistant", "all"]
# A fast tokenizer's call sets ``split_special_tokens`` (and padding/truncation) as state on its shared Rust
# tokenizer before encoding (transformers 5.24). Calls from two threads (fatune serve renders prompts on a
# thread pool) then mix: one thread's content call split the other's ``<start_of_turn>`` markup into pieces.
# Rendering holds this lock around its tokenizer calls; it is uncontended outside serving.
_TOKENIZER_LOCK = threading.Lock()


def as_messages(conversation: Any) -> list[dict]:
    """Accept a message list, ``{"messages": [...]}`` or a ``Conversation``."""
    if isinstance(conversation, dict):
        return conversation["messages"]
    if hasattr(conversation, "messages"):
        return conversation.messages
    return list(conversation)


def _trained(piece: Piece, train_on: TrainOn) -> bool:
    return piece.role == "assistant" or (train_on == "all" and piece.role is not None)


class _MarkupCache:
    """Template markup repeats in every conversation (``<start_of_turn>user\\n``): tokenize it once."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids = tokenizer, {}

    def __call__(self, text: str) -> list[int]:
        if text not in self.ids:
            self.ids[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.ids[text]


def render_batch(conversations: Iterable[Any], tokenizer, template: str | ChatTemplate = "auto", *,
                 train_on: TrainOn = "assistant", add_generation_prompt: bool = False) -> list[dict]:
    """Render many conversations; same result as calling ``render`` on each, much faster."""
    template = get_template(template, tokenizer)
    all_pieces = [template.pieces(as_messages(c), add_generation_prompt) for c in conversations]
    contents = [p.text for pieces in all_pieces for p in pieces if not p.markup]
    markup = _MarkupCache(tokenizer)
    with _TOKENIZER_LOCK:
        content_ids = iter(tokenizer(contents, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                           if contents else [])
        for piece in (p for pieces in all_pieces for p in pieces if p.markup):
            markup(piece.text)
    samples = []
    for pieces in all_pieces:
        input_ids, labels = [], []
        for piece in pieces:
            ids = markup(piece.text) if piece.markup else next(content_ids)
            input_ids += ids
            labels += ids if _trained(piece, train_on) else [IGNORE] * len(ids)
        if labels:
            labels[0] = IGNORE  # the first token has no left context; it is never a target
        samples.append({"input_ids": input_ids, "labels": labels})
    return samples


def render(conversation: Any, tokenizer, template: str | ChatTemplate = "auto", *,
           train_on: TrainOn = "assistant", add_generation_prompt: bool = False) -> dict:
    """Render one conversation to ``{"input_ids", "labels"}``; see the module docstring."""
    return render_batch([conversation], tokenizer, template, train_on=train_on,
                        add_generation_prompt=add_generation_prompt)[0]


def render_prompt(messages: Sequence[dict], tokenizer, template: str | ChatTemplate = "auto") -> list[int]:
    """Token ids of a prompt ending with the assistant header, ready for ``generate``."""
    return render(messages, tokenizer, template, add_generation_prompt=True)["input_ids"]


def truncate(sample: dict, max_length: int) -> dict | None:
    """Cut a rendered sample to ``max_length`` tokens; ``None`` if no trained token would remain."""
    if len(sample["input_ids"]) <= max_length:
        return sample
    labels = sample["labels"][:max_length]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": sample["input_ids"][:max_length], "labels": labels}


def trained_spans(sample: dict) -> list[list[int]]:
    """The runs of consecutive trained token ids (one per assistant turn, with its end-of-turn token)."""
    spans, current = [], []
    for token, label in zip(sample["input_ids"], sample["labels"]):
        if label != IGNORE:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return spans
