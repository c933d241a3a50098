"""Log-likelihood scoring of answer options: the one function FarsTail and ``mc:`` both use.

Each option is rendered as the assistant's answer with the model's own chat template (``data.render``),
and its score is the summed log-probability of the answer's tokens and its end-of-turn token. No
generation is needed, and the highest-scoring option is the model's choice.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fatune.data.render import IGNORE, render_batch


def option_loglikelihoods(chat_model, prompts: Sequence[list[dict]], options: Sequence[Sequence[str]],
                          batch_size: int = 8, progress=None) -> list[list[float]]:
    """For each prompt (messages ending with the user's turn), the log-likelihood of each option."""
    flat = [(i, list(prompt) + [{"role": "assistant", "content": option}])
            for i, (prompt, choices) in enumerate(zip(prompts, options)) for option in choices]
    scores: list[list[float]] = [[] for _ in prompts]
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        conversations = [chat_model.normalized(messages) for _, messages in chunk]
        samples = render_batch(conversations, chat_model.tokenizer, chat_model.template)
        for (index, _), value in zip(chunk, sequence_loglikelihoods(chat_model.model, samples,
                                                                    chat_model.tokenizer.pad_token_id)):
            scores[index].append(value)
        if progress is not None:
            progress.update(len(chunk))
    return scores


def sequence_loglikelihoods(model, samples: Sequence[dict], pad_id: int) -> list[float]:
    """Summed log-probability of the labelled tokens of each rendered sample (one right-padded batch)."""
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.tensor([s["input_ids"] + [pad_id] * (width - len(s["input_ids"])) for s in samples])
    labels = torch.tensor([s["labels"] + [IGNORE] * (width - len(s["labels"])) for s in samples])
    mask = torch.tensor([[1] * len(s["input_ids"]) + [0] * (width - len(s["input_ids"])) for s in samples])
    with torch.no_grad():
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
    logits = logits[:, -width:]  # prompt learning prepends virtual tokens: keep the real positions
    targets = labels[:, 1:].to(logits.device)
    scored = targets != IGNORE
    # log-softmax only where an answer token is predicted: the full [batch, length, 262k] would be huge
    logprobs = torch.log_softmax(logits[:, :-1][scored].float(), dim=-1)
    picked = logprobs.gather(-1, targets[scored].unsqueeze(-1)).squeeze(-1)
    rows = torch.arange(len(samples), device=logits.device).unsqueeze(1).expand_as(targets)[scored]
    return torch.zeros(len(samples), device=logits.device).index_add_(0, rows, picked).tolist()
