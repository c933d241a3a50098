"""The text of one generated answer as its tokens arrive: what may be sent to the client now.

``RowText`` decodes the row's tokens from the start each time (so characters spread over several byte
tokens and joined Persian letters come out whole, as ``generation.engine._TextStreamer`` does) and
releases only text that can no longer change:

* text ending in an incomplete UTF-8 character (the decoder's "\\ufffd") waits for its other bytes;
* text that could be the start of a ``stop`` string waits until it cannot be (or is cut there);
* trailing whitespace waits for the next visible character, because the answer as a whole is stripped
  like ``fatune generate``'s (``engine.ChatModel._finish``): the streamed pieces joined equal the
  non-streamed answer exactly. ``str.strip`` never removes the zero-width non-joiner (U+200C, a format
  character, not whitespace), which Persian words need.

Pure Python over a tokenizer's ``decode``: unit-tested on hand-made token sequences.
"""

from __future__ import annotations

from typing import Sequence

INCOMPLETE = "\ufffd"  # what a byte-level decoder shows for a character whose bytes have not all arrived


def first_stop(text: str, stops: Sequence[str]) -> int:
    """The index of the earliest occurrence of any stop string in ``text``, or -1."""
    found = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    return min(found) if found else -1


def partial_stop(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that is the beginning of a stop string (0 when none):
    those characters may turn into a stop string with the next token, so they are not sent yet."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class RowText:
    """Incremental text of one answer. ``add`` each generated token (not the end-of-turn token); it returns
    the text that became final. ``finish`` returns the rest. ``text`` is everything released so far: after
    ``finish``, the whole answer, equal to the pieces joined."""

    def __init__(self, tokenizer, stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.text = ""  # released to the client
        self.hit_stop = False  # a stop string ended the answer

    def _decoded(self) -> str:
        # lstrip: the answer is stripped at both ends; the start is known at once
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()

    def _release(self, visible: str) -> str:
        if len(visible) <= len(self.text):
            return ""
        # Decoding from the start keeps released text stable in practice (only the held-back end changes);
        # if a tokenizer ever rewrote released text, sending the tail beyond it is all a stream can do.
        piece = visible[len(self.text):]
        self.text = visible
        return piece

    def add(self, token: int) -> str:
        """Take one token; return the newly final text (often "" while a character or a stop is pending)."""
        if self.hit_stop:
            return ""
        self.ids.append(token)
        decoded = self._decoded()
        cut = first_stop(decoded, self.stops)
        if cut >= 0:  # the answer ends before the stop string; the caller stops generating this row
            self.hit_stop = True
            return self._release(decoded[:cut].rstrip())
        visible = decoded.rstrip(INCOMPLETE)
        visible = visible[:len(visible) - partial_stop(visible, self.stops)]
        return self._release(visible.rstrip())

    def finish(self) -> str:
        """The answer is complete (end of turn, a limit, a stop string): release what was held back, except
        the trailing whitespace the whole answer is stripped of and anything after a stop string."""
        if self.hit_stop:
            return ""
        decoded = self._decoded()
        cut = first_stop(decoded, self.stops)
        return self._release((decoded[:cut] if cut >= 0 else decoded).rstrip())
