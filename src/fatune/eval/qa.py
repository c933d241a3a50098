"""``qa:PATH``: extractive question answering on a SQuAD 2.0 file (PQuAD, PersianQA), by greedy generation.

Each question is asked with ``fatune.data.squad.qa_prompt``, the same chat layout the SQuAD training data
uses, so a model fine-tuned on one split of PQuAD is evaluated in the format it learned; a base model gets
the instruction (answer with a short span, or say the fixed no-answer sentence) in the same prompt.
Answers are scored by ``qa_metrics.qa_scores``: SQuAD 2.0 exact match and F1 with Persian normalisation.

The default answer budget is 32 new tokens: SQuAD answers are short spans (PQuAD's are a few words) and
the no-answer sentence is about ten tokens, while a model that starts explaining would otherwise spend
the fidelity suite's 128 tokens per question on text that can only lower its F1 (precision). The share
of answers cut off by the budget is reported (``hit_limit_rate``); pass ``max_new_tokens`` to change it.
"""

from __future__ import annotations

from fatune.errors import FatuneError
from fatune.eval.qa_metrics import qa_scores
from fatune.eval.tasks import greedy_answers, spread, task_file

DEFAULT_MAX_NEW_TOKENS = 32
SAMPLES = 20  # questions kept with their prediction, for reading the failures


def qa_task(chat_model, path: str, limit: int | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
            batch_size: int = 6) -> dict:
    """EM, F1 (0-100) and their breakdown for the questions of ``path`` (``#START:END`` selects articles)."""
    from fatune.data.squad import NO_ANSWER, qa_prompt, read_squad

    file, articles = task_file(path)
    items = spread(list(read_squad(file, articles=articles)), limit)
    if not items:
        raise FatuneError(f"qa:{path}: no questions to evaluate")
    predictions, hit_limit = greedy_answers(chat_model, [qa_prompt(item) for item in items], max_new_tokens,
                                            batch_size, "qa")
    scores = qa_scores(predictions, items, NO_ANSWER)
    tail = {key: scores.pop(key) for key in ("item_ids", "per_item")}
    samples = [{"id": item.id, "question": item.question, "gold": item.answers, "impossible": item.impossible,
                "prediction": prediction} for item, prediction in zip(items[:SAMPLES], predictions)]
    return {**scores, "hit_limit_rate": round(sum(hit_limit) / len(items), 4), "max_new_tokens": max_new_tokens,
            "source": str(file), "samples": samples, **tail}
