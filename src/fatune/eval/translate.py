"""``translate:SRC+TGT``: English -> Persian translation of line-aligned files (NTREX, FLORES), greedy.

Each English line is asked with ``fatune.data.translation.translation_prompt``, the layout of the
translation training data; the answers are scored against the Persian lines by ``mt_metrics.mt_scores``:
corpus chrF (headline, with a bootstrap interval), chrF++ and BLEU, all 0-100.

The default budget is 128 new tokens: a FLORES/NTREX sentence is about 25 English words, and its Persian
translation takes some 40-80 tokens with the tokenizers fatune trains (Gemma 3); 128 leaves room for long
sentences without letting a looping model run on. ``hit_limit_rate`` says how often it was reached.
"""

from __future__ import annotations

from fatune.data.sources import parse_source, split_pair
from fatune.errors import FatuneError
from fatune.eval.mt_metrics import mt_scores
from fatune.eval.tasks import greedy_answers, spread

DEFAULT_MAX_NEW_TOKENS = 128
SAMPLES = 10


def pair_of(path: str) -> tuple[str, str, slice | None]:
    """``(SRC, TGT, rows)`` of a ``SRC+TGT[#START:END]`` task path; a path without ``+`` is an error."""
    spec, rows = parse_source(path)
    pair = split_pair(spec)
    if pair is None:
        raise FatuneError(f"translate:{path}: name two line-aligned files as translate:SRC+TGT "
                          "(English, then Persian), e.g. translate:eng.txt+fas.txt")
    return pair[0], pair[1], rows


def translate_task(chat_model, path: str, limit: int | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                   batch_size: int = 6) -> dict:
    """chrF, chrF++ and BLEU of the model's Persian translations of the English lines of ``path``."""
    from fatune.data.translation import read_pairs, translation_prompt

    src, tgt, rows = pair_of(path)
    pairs = spread(list(read_pairs(src, tgt, rows)), limit)
    if not pairs:
        raise FatuneError(f"translate:{path}: no line pairs to evaluate")
    hypotheses, hit_limit = greedy_answers(chat_model, [translation_prompt(source) for _, source, _ in pairs],
                                           max_new_tokens, batch_size, "translate")
    references = [target.strip() for _, _, target in pairs]
    scores = mt_scores([h.strip() for h in hypotheses], references)
    per_item = scores.pop("per_item")
    samples = [{"line": line, "source": source, "reference": reference, "translation": hypothesis}
               for (line, source, _), reference, hypothesis in zip(pairs[:SAMPLES], references, hypotheses)]
    return {**scores, "hit_limit_rate": round(sum(hit_limit) / len(pairs), 4), "max_new_tokens": max_new_tokens,
            "source": f"{src}+{tgt}", "samples": samples, "item_ids": [str(line) for line, _, _ in pairs],
            "per_item": per_item}
