"""Errors a user can act on.

Every error that reaches the CLI is a ``FatuneError``: the CLI prints its message to stderr and
exits with code 2, with no traceback. ``DataError`` carries where the bad record is, so the message
reads ``FILE:LINE: what is wrong (field)``, the format editors and CI logs can jump to. Records inside
one JSON document (SQuAD files) have no useful line, so their location is a JSON path instead and the
message reads ``FILE: data[3].paragraphs[0].qas[5]: what is wrong (field)``.
"""

from __future__ import annotations


class FatuneError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class DataError(FatuneError):
    """A bad record in a data file.

    ``reason`` is a short stable key (``unknown_role``, ``bad_order``, ...) used to count skipped
    records by reason; ``field`` names the JSON field at fault (``messages[2].role``). ``line`` is a
    1-based line number, a JSON path string (``data[3].paragraphs[0].qas[5]``) or None (the whole file).
    """

    def __init__(self, source: str, line: int | str | None, message: str, field: str | None = None,
                 reason: str = "invalid"):
        self.source = source
        self.line = line
        self.message = message
        self.field = field
        self.reason = reason
        super().__init__(self.format())

    def format(self) -> str:
        if self.line is None:
            where = self.source
        elif isinstance(self.line, str):
            where = f"{self.source}: {self.line}"
        else:
            where = f"{self.source}:{self.line}"
        field = f" ({self.field})" if self.field else ""
        return f"{where}: {self.message}{field}"
