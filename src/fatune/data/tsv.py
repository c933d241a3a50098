"""Rows of a task TSV (FarsTail, SIB-200): decoding, the header check, record-start line numbers and the column count.

Both formats quote fields that hold tabs or newlines, so a record can span several physical lines; the
line reported for a bad record is the one where it starts. Format-specific checks (labels, empty text)
stay with each format's reader.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator

from fatune.data.records import select_rows, skip_or_raise
from fatune.data.validate import short_repr
from fatune.errors import DataError

_SHOWN = 5  # header columns quoted in an error: a file that is no TSV can have a megabyte-long first line


def read_text(path: Path, name: str) -> io.StringIO:
    """The file decoded as UTF-8 (a BOM dropped), for ``tsv_rows``.

    Decoding the whole file first gives an undecodable byte a line number; decoded lazily by ``open``, it raised a
    bare ``UnicodeDecodeError`` in the middle of csv's iteration (found by fuzzing). The bundled task files
    are a few MB at most. ``newline=""`` keeps ``\\r`` and ``\\n`` inside quoted fields for csv, as ``open`` did."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DataError(name, line, f"invalid UTF-8: byte 0x{data[error.start]:02x}; save the file as UTF-8", None,
                        "invalid_utf8") from None
    return io.StringIO(text, newline="")


def tsv_rows(handle, name: str, required: tuple[str, ...], needs: str, rows: slice | None, skip_invalid: bool,
             stats, strip_header: bool = False) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, {column: value})`` for each complete row of the 0-based ``rows`` of an open TSV.

    ``needs`` completes the header error ("a FarsTail TSV needs the columns ..."). A row with too few
    columns, or with more than the header and text in the extra ones, is a ``DataError``, skipped and counted
    with ``skip_invalid``. Blank lines are not records (as in JSONL)."""
    reader = csv.reader(handle, delimiter="\t")
    try:
        header = [column.strip() if strip_header else column for column in next(reader, None) or []]
    except csv.Error as error:
        raise DataError(name, 1, f"unreadable TSV header ({error})", "header", "unknown_format") from None
    if not header or any(column not in header for column in required):
        found = short_repr(header[:_SHOWN], 200) if header else None
        raise DataError(name, 1, f"{needs}; found {found}", "header", "unknown_format")

    def records():
        line_end = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                # csv gives up on a field over its size limit (131072 characters), which a quote opening a field
                # and never closed makes of the rest of the file; it raised a bare csv.Error (found by fuzzing).
                # Nothing after this point can be read reliably, so this stops the load even with skip_invalid.
                raise DataError(name, line_end + 1, f"unreadable TSV row ({error}); a field that starts with a "
                                "quote (\") runs until the next quote, across lines: quote the whole field and "
                                "double the quotes inside it", None, "bad_row") from None
            line, line_end = line_end + 1, reader.line_num  # report the line where the record starts
            if not row:
                continue  # a blank line (csv gives []), e.g. a trailing one: not a record
            yield line, row

    for _, (line, row) in select_rows(records(), rows, name, "rows"):
        if len(row) < len(header):
            skip_or_raise(DataError(name, line, f"expected {len(header)} tab-separated columns, found {len(row)}",
                                    None, "bad_row"), skip_invalid, stats)
            continue
        if any(extra.strip() for extra in row[len(header):]):
            # Text past the last column is a field split at an unquoted tab: zip() dropped it, cutting the text
            # without a word (found by fuzzing). Empty extra columns (a trailing tab) are harmless.
            skip_or_raise(DataError(name, line, f"expected {len(header)} tab-separated columns, found {len(row)} "
                                    "(a field with a tab must be quoted)", None, "bad_row"), skip_invalid, stats)
            continue
        yield line, dict(zip(header, row))
