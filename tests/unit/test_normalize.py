"""normalize_persian: a table of cases that change and cases that must come out unchanged."""

import json

import pytest

from fatune.data import normalize_persian, sample_path

ZWNJ = "\u200c"

CHANGES = [
    ("علي", "علی"),                      # Arabic yeh -> Persian yeh
    ("مصطفى", "مصطفی"),                  # alef maksura -> Persian yeh
    ("كتاب", "کتاب"),                    # Arabic kaf -> keheh
    ("سلامـــت", "سلامت"),               # tatweel removed
    ("ﻛﺘﺎﺏ", "کتاب"),                    # presentation forms -> base letters (kaf form -> Persian kaf)
    ("ﻳﻚ", "یک"),                        # yeh and kaf presentation forms -> Persian letters
    ("ﻻ", "لا"),                         # lam-alef ligature
    ("ﮤ", "ۀ"),                          # heh-with-yeh presentation form -> composed ۀ
    (f"می{ZWNJ}{ZWNJ}خواهم", f"می{ZWNJ}خواهم"),   # repeated ZWNJ collapses
    (f"کتاب{ZWNJ} ها", "کتاب ها"),       # ZWNJ before a space dropped
    (f"کتاب {ZWNJ}ها", "کتاب ها"),       # ZWNJ after a space dropped
    (f"{ZWNJ}سلام{ZWNJ}", "سلام"),       # ZWNJ at the text's edges dropped
    (f"کتاب{ZWNJ}.", "کتاب."),           # ZWNJ at a word edge before punctuation dropped
    (f"خانه{ZWNJ}۲", "خانه۲"),           # ZWNJ before a digit is a word edge
]

UNCHANGED = [
    f"می{ZWNJ}خواهم",                    # ZWNJ inside a word is kept
    f"کتاب{ZWNJ}ها",
    "۱۲۳ ١٢٣",                           # Persian and Arabic-Indic digits untouched by default
    "ۀ",                                 # no NFC/NFD decomposition
    "x²",                                # no NFKC
    "دو  فاصله",                         # double spaces kept
    "Hello, World! 2024",                # Latin text and digits kept
    "ک ی گ چ پ ژ",                       # Persian letters
    "\ufeffمتن",                          # the BOM is not a presentation form
    "",
]


@pytest.mark.parametrize("text, expected", CHANGES)
def test_rewrites(text, expected):
    assert normalize_persian(text) == expected


@pytest.mark.parametrize("text", UNCHANGED)
def test_leaves_unchanged(text):
    assert normalize_persian(text) == text


@pytest.mark.parametrize("text, _", CHANGES)
def test_is_idempotent(text, _):
    once = normalize_persian(text)
    assert normalize_persian(once) == once


@pytest.mark.parametrize("digits, expected", [(None, "۱۲ ١٢ 12"), ("persian", "۱۲ ۱۲ 12"), ("latin", "12 12 12")])
def test_digit_unification_is_optional(digits, expected):
    assert normalize_persian("۱۲ ١٢ 12", digits=digits) == expected


def test_unknown_digit_mode_is_an_error():
    with pytest.raises(ValueError, match="digits"):
        normalize_persian("۱", digits="roman")


def test_bundled_sample_is_already_normalized():
    with open(sample_path(), encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            for message in json.loads(line)["messages"]:
                assert normalize_persian(message["content"]) == message["content"], f"line {number}"
