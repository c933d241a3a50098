"""serve.text: incremental answer text on hand-made byte tokens (UTF-8 hold-back, stop strings, stripping)."""

import random

import pytest

from fatune.serve.text import RowText, first_stop, partial_stop


class ByteTokenizer:
    """Each token id is a byte string; decoding joins them and shows incomplete UTF-8 as U+FFFD, as a
    byte-level BPE's decoder does."""

    def __init__(self, pieces):
        self.pieces = [p if isinstance(p, bytes) else p.encode("utf-8") for p in pieces]

    def decode(self, ids, skip_special_tokens=True):
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def feed(tokenizer, ids, stops=()):
    row = RowText(tokenizer, stops)
    pieces = [row.add(i) for i in ids]
    if not row.hit_stop:
        pieces.append(row.finish())
    return row, pieces


def byte_tokens(text: str) -> tuple[ByteTokenizer, list[int]]:
    data = text.encode("utf-8")
    return ByteTokenizer([bytes([b]) for b in data]), list(range(len(data)))


def test_a_persian_character_split_over_tokens_is_held_until_whole():
    tok, ids = byte_tokens("سلام")  # 2 bytes per letter
    row, pieces = feed(tok, ids)
    assert pieces == ["", "س", "", "ل", "", "ا", "", "م", ""]
    assert row.text == "سلام"


def test_zwnj_is_kept_inside_and_at_the_end():
    tok, ids = byte_tokens("می\u200cخواهم\u200c")
    row, pieces = feed(tok, ids)
    assert "".join(pieces) == row.text == "می\u200cخواهم\u200c"


def test_whitespace_is_stripped_at_both_ends_and_held_in_the_middle():
    tok = ByteTokenizer(["  ", "a", " ", "\n", "b", " ", "\n"])
    row, pieces = feed(tok, range(7))
    assert pieces == ["", "a", "", "", " \nb", "", "", ""]
    assert row.text == "a \nb"


def test_text_is_cut_before_the_first_stop_string():
    tok = ByteTokenizer(["Hello", " Us", "er:", " more"])
    row, pieces = feed(tok, [0, 1, 2, 3], stops=["User:"])
    assert pieces == ["Hello", "", "", ""]  # " Us" could start "User:", so it waits; then it is cut
    assert row.hit_stop and row.text == "Hello"


def test_a_possible_stop_start_is_released_once_it_cannot_be_one():
    tok = ByteTokenizer(["ab", "U", "x"])
    row, pieces = feed(tok, [0, 1, 2], stops=["User"])
    assert pieces == ["ab", "", "Ux", ""]
    assert not row.hit_stop and row.text == "abUx"


def test_the_earliest_of_several_stops_wins_and_a_stop_inside_one_token_cuts_it():
    tok = ByteTokenizer(["one two three"])
    row, pieces = feed(tok, [0], stops=["three", "two"])
    assert row.text == "one"
    assert first_stop("one two three", ["three", "two"]) == 4
    assert first_stop("abc", ["x", ""]) == -1


def test_partial_stop_lengths():
    assert partial_stop("hello Us", ["User:"]) == 2
    assert partial_stop("hello U", ["User:", "Uzbek"]) == 1
    assert partial_stop("hello", ["User:"]) == 0
    assert partial_stop("xx</", ["</s>", "<"]) == 2
    assert partial_stop("", ["a"]) == 0


def test_a_stop_string_split_inside_a_persian_character():
    tok, ids = byte_tokens("سلام پایان")
    row, pieces = feed(tok, ids, stops=["پایان"])
    assert row.hit_stop and row.text == "سلام" and "".join(pieces) == "سلام"


def test_an_incomplete_character_left_at_the_end_is_released_as_decoded():
    tok = ByteTokenizer([b"a", "س".encode()[:1]])  # the answer hit its limit mid-character
    row, pieces = feed(tok, [0, 1])
    assert pieces == ["a", "", "\ufffd"]
    assert row.text == "a\ufffd" == tok.decode([0, 1]).strip()


@pytest.mark.parametrize("seed", range(20))
def test_joined_pieces_equal_the_stripped_whole_answer(seed):
    """What ``fatune generate`` returns (``decode(...).strip()``) is what the pieces join to, for random
    token sequences over Persian letters split into bytes, ZWNJ, spaces, newlines and ASCII."""
    rng = random.Random(seed)
    alphabet = ["سل", "ام", "\u200c", " ", "\n", "ok", "۱۲", "."]
    pieces = []
    for item in alphabet:
        data = item.encode("utf-8")
        pieces += [data, data[:1], data[1:]] if len(data) > 1 else [data]
    tok = ByteTokenizer(pieces)
    ids = [rng.randrange(len(pieces)) for _ in range(rng.randrange(1, 40))]
    row, out = feed(tok, ids)
    assert "".join(out) == row.text == tok.decode(ids).strip()
