"""The arena's votes file: one JSON object per line, appended as humans vote.

A vote reads ``{"time": ISO-8601, "models": [LEFT, RIGHT], "winner": "left"|"right"|"tie"|"both_bad",
"prompt": str, "answers": [LEFT_ANSWER, RIGHT_ANSWER]}``; extra keys are allowed and kept. ``VoteLog``
appends votes durably (one ``write`` per line, then ``fsync``) so a crash loses at most the vote in
flight; ``read_votes`` reads any file in this format and reports bad lines as ``FILE:LINE: what is
wrong (field)``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from fatune.errors import DataError

log = logging.getLogger(__name__)

WINNERS = ("left", "right", "tie", "both_bad")


def vote_problem(vote: Any) -> tuple[str, str | None] | None:
    """``(what is wrong, field)`` for the first problem with ``vote``, or None when it is a valid vote."""
    if not isinstance(vote, dict):
        return "expected a JSON object (a vote)", None
    for field in ("time", "models", "winner", "prompt", "answers"):
        if field not in vote:
            return "missing field", field
    time = vote["time"]
    if not isinstance(time, str):
        return "time must be a string", "time"
    try:
        datetime.fromisoformat(time)
    except ValueError:
        return "time must be an ISO-8601 date and time, e.g. 2026-11-29T17:00:00+00:00", "time"
    models = vote["models"]
    if not isinstance(models, list) or len(models) != 2:
        return "models must be a list of two model names", "models"
    for side, model in enumerate(models):
        if not isinstance(model, str) or not model.strip():
            return "a model name must be a non-empty string", f"models[{side}]"
    if models[0] == models[1]:
        return "models must name two different models", "models"
    if vote["winner"] not in WINNERS:
        return f"winner must be one of {', '.join(WINNERS)}", "winner"
    if not isinstance(vote["prompt"], str):
        return "prompt must be a string", "prompt"
    answers = vote["answers"]
    if not isinstance(answers, list) or len(answers) != 2:
        return "answers must be a list of two strings", "answers"
    for side, answer in enumerate(answers):
        if not isinstance(answer, str):
            return "an answer must be a string", f"answers[{side}]"
    return None


def make_vote(models: Sequence[str], winner: str, prompt: str, answers: Sequence[str],
              time: str | datetime | None = None) -> dict:
    """A validated vote dict; ``time`` defaults to now in UTC (``2026-11-29T17:00:00+00:00``)."""
    if time is None:
        time = datetime.now(timezone.utc)
    if isinstance(time, datetime):
        time = time.isoformat(timespec="seconds")
    vote = {"time": time, "models": list(models), "winner": winner, "prompt": prompt, "answers": list(answers)}
    problem = vote_problem(vote)
    if problem:
        raise DataError("vote", None, *problem)
    return vote


def _last_line(path: Path, block: int = 65536) -> tuple[int, bytes]:
    """``(offset, bytes)`` of the last line of ``path``, its newline included; read from the end, since
    a votes file can grow large and only its tail matters."""
    with open(path, "rb") as handle:
        position, tail = handle.seek(0, os.SEEK_END), b""
        while position > 0:
            previous, position = position, max(0, position - block)
            handle.seek(position)
            tail = handle.read(previous - position) + tail
            newline = tail.rfind(b"\n", 0, len(tail) - 1)  # the newline ending the line before the last
            if newline >= 0:
                return position + newline + 1, tail[newline + 1:]
        return 0, tail


class VoteLog:
    """Appends votes to a JSON-lines file; safe to share between threads.

    The file is opened in append mode (``O_APPEND``), never truncated: each vote is one ``write`` of a
    whole line followed by ``fsync``, under a lock, so lines never interleave and a vote that
    ``append`` returned from survives a crash. The one exception is a torn last line found on opening,
    left by a crash mid-write: see ``_end_last_line``. Use one ``VoteLog`` per file per process.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._end_last_line()

    def _end_last_line(self) -> None:
        """Make sure the next vote starts a line of its own.

        A crash during a write can leave a torn last line. Appending after it would glue the next vote
        to it and turn the pair into one bad line mid-file that ``read_votes`` rejects, so the torn
        tail (only the bytes after the last newline, never a whole vote) moves to ``PATH.torn`` and is
        cut off here. A last line that is valid JSON but lacks its newline (hand-written) just gets one.
        """
        start, tail = _last_line(self.path)
        if not tail or tail.endswith(b"\n"):
            return
        try:
            if tail.strip():
                json.loads(tail.decode("utf-8-sig"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
            torn = self.path.with_name(self.path.name + ".torn")
            with open(torn, "ab") as handle:
                handle.write(tail + b"\n")
            os.truncate(self.path, start)
            log.warning("%s: the last line was a torn write (%d bytes, a crash mid-vote); moved it to %s",
                        self.path, len(tail), torn)
            return
        self._write(b"\n")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop in case of a short write anyway
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def append(self, vote: dict) -> None:
        """Validate ``vote`` and append it as one line; it is on disk when this returns."""
        problem = vote_problem(vote)
        if problem:
            raise DataError(str(self.path), None, *problem)
        line = (json.dumps(vote, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise ValueError(f"{self.path}: the vote log is closed")
            self._write(line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> VoteLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_votes(path: str | Path) -> list[dict]:
    """The votes in ``path`` (extra keys kept), in file order; blank lines are skipped.

    A bad line is a ``DataError`` (``FILE:LINE: what is wrong (field)``), except a last line without
    a newline that is not valid JSON: that is a write a crash cut short, skipped with a warning.
    """
    name = str(path)
    try:
        raw_lines = Path(path).read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        raise DataError(name, None, "no such votes file") from None
    votes = []
    for number, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        torn = number == len(raw_lines) and not raw.endswith(b"\n")
        try:
            vote = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError as error:
            if torn:  # a cut can fall inside a multi-byte character
                log.warning("%s:%d: skipped an incomplete last line (a write cut short by a crash)", name, number)
                continue
            raise DataError(name, number, f"invalid UTF-8 at byte {error.start + 1} of the line", None,
                            "invalid_utf8") from None
        except json.JSONDecodeError as error:
            if torn:
                log.warning("%s:%d: skipped an incomplete last line (a write cut short by a crash)", name, number)
                continue
            raise DataError(name, number, f"not valid JSON: {error.msg} at column {error.colno}", None,
                            "invalid_json") from None
        problem = vote_problem(vote)
        if problem:
            raise DataError(name, number, *problem)
        votes.append(vote)
    return votes
