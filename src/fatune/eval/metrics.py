"""Pure metric functions for evaluation: Persian fidelity of answers, choice scoring and loss units.

Question answering (``qa_metrics``), translation (``mt_metrics``) and bootstrap intervals and paired
gains (``stats``) have their own modules; the Wilson interval for proportions stays here.

Nothing here touches a model; the evaluators produce strings, log-likelihoods and losses, and these
functions turn them into numbers for the report. Letter counting is shared with ``data inspect``
through ``fatune.data.script`` so "Persian share" means the same thing everywhere.
"""

from __future__ import annotations

import math
import re
import string
from itertools import pairwise

from fatune.data.script import letter_counts, persian_share

# A short unit (2-20 chars, starting with a non-space) repeated 5+ times in a row: catches loops that
# whitespace tokens miss, e.g. "ههههههههههه" or a phrase glued to itself with no spaces.
_CHAR_LOOP = re.compile(r"((?=\S)[^\n]{2,20}?)\1{4,}")
# Punctuation stripped from token edges for echo matching, so "سلام،" and "سلام" count as the same word.
_EDGE_PUNCT = string.punctuation + "،؛؟«»…“”‘’"
# exp() overflows a float just above 709.78; beyond that the perplexity is reported as inf.
_MAX_EXP = 709.0


def mostly_persian(text: str, threshold: float = 0.5) -> bool:
    """True when at least ``threshold`` of the text's letters are in Persian script (False for no letters)."""
    persian, total = letter_counts(text)
    # No letters (empty, digits, emoji) is never "Persian", even with threshold=0.
    return total > 0 and persian / total >= threshold


def repeated_ngram_ratio(text: str, n: int = 4) -> float:
    """Share of the whitespace-token n-grams that repeat an earlier n-gram of the same text, in [0, 1]."""
    tokens = text.split()
    if len(tokens) < n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    for gram in grams:
        if gram in seen:
            repeats += 1
        seen.add(gram)
    return repeats / len(grams)


def _has_char_loop(text: str) -> bool:
    # Only loops whose unit holds a letter count: "----------" rules and "==========" banners are layout.
    return any(any(c.isalpha() for c in m.group(1)) for m in _CHAR_LOOP.finditer(text))


def is_degenerate(text: str, n: int = 4, threshold: float = 0.3) -> bool:
    """True for looping output: many repeated token n-grams, or a short character unit repeated 5+ times."""
    return repeated_ngram_ratio(text, n) >= threshold or _has_char_loop(text)


def _words(text: str) -> list[str]:
    words = (token.casefold().strip(_EDGE_PUNCT) for token in text.split())
    return [w for w in words if w]


def is_echo(answer: str, prompt: str, threshold: float = 0.6) -> bool:
    """True when at least ``threshold`` of the answer's words lie in word pairs copied from the prompt.

    Word *pairs* rather than single words: an answer naturally reuses the prompt's vocabulary ("پایتخت
    ایران تهران است" for "پایتخت ایران کجاست؟"), and a one-word answer that quotes the prompt is a reply,
    not an echo. Copying runs of two or more words in the prompt's order is what echoing looks like, so
    a word counts as copied only when it sits in a bigram that also occurs in the prompt. Answers of fewer
    than two words can therefore never be echoes; empty answers are counted by ``empty_rate`` instead.
    """
    answer_words, prompt_words = _words(answer), _words(prompt)
    if len(answer_words) < 2:
        return False
    prompt_pairs = set(pairwise(prompt_words))
    copied = [False] * len(answer_words)
    for i, pair in enumerate(pairwise(answer_words)):
        if pair in prompt_pairs:
            copied[i] = copied[i + 1] = True
    return sum(copied) / len(answer_words) >= threshold


def wilson_ci(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion; unlike the normal interval it behaves at 0 and ``total``."""
    if total == 0:
        return 0.0, 1.0
    if not 0 <= successes <= total:
        raise ValueError(f"successes must be in [0, {total}], got {successes}")
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # Clamp: rounding can push the bounds a hair outside [0, 1] at p = 0 or 1.
    return max(0.0, centre - half), min(1.0, centre + half)


def confusion_matrix(gold: list[str], predicted: list[str], labels: list[str]) -> dict[str, dict[str, int]]:
    """``matrix[gold][predicted]`` counts over ``labels`` (all present, zeros included)."""
    if len(gold) != len(predicted):
        raise ValueError(f"gold has {len(gold)} items but predicted has {len(predicted)}")
    matrix = {g: {p: 0 for p in labels} for g in labels}
    for g, p in zip(gold, predicted):
        # Unknown labels are an error rather than silently dropped: map unparsable outputs to a label first.
        if g not in matrix or p not in matrix:
            raise ValueError(f"label not in {labels}: gold={g!r}, predicted={p!r}")
        matrix[g][p] += 1
    return matrix


def argmax_choice(loglikelihoods: list[float]) -> int:
    """Index of the highest log-likelihood; ties go to the lowest index and NaN never wins."""
    if not loglikelihoods:
        raise ValueError("no options to choose from")
    best = 0
    for i, value in enumerate(loglikelihoods):
        # Strict '>' keeps the first of tied maxima; a NaN at index 0 is replaced by any real value.
        if value > loglikelihoods[best] or (math.isnan(loglikelihoods[best]) and not math.isnan(value)):
            best = i
    return best


def normalized_choice(loglikelihoods: list[float], option_bytes: list[int]) -> int:
    """``argmax_choice`` of the log-likelihood per UTF-8 byte of each option (lm-eval's ``acc_norm``, by
    bytes rather than characters so Persian and Latin options are measured alike).

    Summed log-likelihoods favour short options, since every extra token costs probability; dividing by
    the option's length removes most of that bias. An empty option counts as one byte: its end-of-turn
    token is still scored."""
    if len(loglikelihoods) != len(option_bytes):
        raise ValueError(f"{len(loglikelihoods)} scores but {len(option_bytes)} option lengths")
    return argmax_choice([score / max(size, 1) for score, size in zip(loglikelihoods, option_bytes)])


def choice_accuracy(all_loglikelihoods: list[list[float]], answers: list[int],
                    option_bytes: list[list[int]] | None = None) -> dict:
    """Multiple-choice accuracy of argmax picks, with its Wilson 95% interval (rounded to 4 decimals).

    With ``option_bytes`` (each option's length in UTF-8 bytes, per question) also ``acc_norm``, the
    accuracy of length-normalised picks (``normalized_choice``). ``per_item`` holds each question's 0/1."""
    if len(all_loglikelihoods) != len(answers):
        raise ValueError(f"{len(all_loglikelihoods)} score lists but {len(answers)} answers")
    hits = [int(argmax_choice(scores) == answer) for scores, answer in zip(all_loglikelihoods, answers)]
    correct, total = sum(hits), len(answers)
    lo, hi = wilson_ci(correct, total)
    result = {"accuracy": round(correct / total, 4) if total else 0.0, "correct": correct, "total": total,
              "accuracy_ci95": [round(lo, 4), round(hi, 4)], "per_item": {"accuracy": hits}}
    if option_bytes is not None:
        if len(option_bytes) != total:
            raise ValueError(f"{len(option_bytes)} option length lists but {total} answers")
        norm_hits = [int(normalized_choice(scores, sizes) == answer)
                     for scores, sizes, answer in zip(all_loglikelihoods, option_bytes, answers)]
        lo, hi = wilson_ci(sum(norm_hits), total)
        result.update(acc_norm=round(sum(norm_hits) / total, 4) if total else 0.0,
                      acc_norm_ci95=[round(lo, 4), round(hi, 4)])
        result["per_item"]["acc_norm"] = norm_hits
    return result


def fidelity_flags(answers: list[str], prompts: list[str], hit_limit: list[bool]) -> dict[str, list[int]]:
    """Per answer 0/1: ``mostly_persian``, ``empty``, ``echo``, ``degenerate``, ``hit_limit`` and
    ``clean_persian`` (mostly Persian and none of the failures, see ``fidelity_summary``)."""
    if not len(answers) == len(prompts) == len(hit_limit):
        raise ValueError(f"lengths differ: {len(answers)} answers, {len(prompts)} prompts, "
                         f"{len(hit_limit)} hit_limit flags")
    persian = [mostly_persian(a) for a in answers]
    empty = [not a.strip() for a in answers]
    echo = [is_echo(a, p) for a, p in zip(answers, prompts)]
    degenerate = [is_degenerate(a) for a in answers]
    clean = [p and not (e or ec or d) for p, e, ec, d in zip(persian, empty, echo, degenerate)]
    flags = {"mostly_persian": persian, "empty": empty, "echo": echo, "degenerate": degenerate,
             "hit_limit": [bool(h) for h in hit_limit], "clean_persian": clean}
    return {name: [int(v) for v in values] for name, values in flags.items()}


def fidelity_summary(answers: list[str], prompts: list[str], hit_limit: list[bool]) -> dict:
    """Rates of Persian, empty, echoed, degenerate and truncated answers over a set of generations.

    ``clean_persian_rate`` is the headline: an answer counts only if it is mostly Persian and also not
    empty, not an echo of the (Persian) prompt and not a loop, so none of those failures can inflate it.
    """
    flags = fidelity_flags(answers, prompts, hit_limit)
    n = len(answers)

    def rate(values) -> float:
        return round(sum(values) / n, 4) if n else 0.0

    return {"n": n, "persian_share": rate(persian_share(a) for a in answers),
            "mostly_persian_rate": rate(flags["mostly_persian"]), "empty_rate": rate(flags["empty"]),
            "echo_rate": rate(flags["echo"]), "degenerate_rate": rate(flags["degenerate"]),
            "hit_limit_rate": rate(flags["hit_limit"]), "clean_persian_rate": rate(flags["clean_persian"])}


def bits_per_byte(total_nll_nats: float, total_bytes: int) -> float:
    """Summed negative log-likelihood (nats) per UTF-8 byte, in bits: comparable across tokenizers."""
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be positive, got {total_bytes}")
    return total_nll_nats / math.log(2) / total_bytes


def perplexity(mean_nll: float) -> float:
    """``exp(mean_nll)``, or inf where that would overflow (an untrained or broken model)."""
    return math.exp(mean_nll) if mean_nll <= _MAX_EXP else math.inf
