"""Rows of a task TSV (FarsTail, SIB-200): the header check, record-start line numbers and the column count.

Both formats quote fields that hold tabs or newlines, so a record can span several physical lines; the
line reported for a bad record is the one where it starts. Format-specific checks (labels, empty text)
stay with each format's reader.
"""

from __future__ import annotations

import csv
from typing import Iterator

from fatune.errors import DataError


def tsv_rows(handle, name: str, required: tuple[str, ...], needs: str, rows: slice | None, skip_invalid: bool,
             stats, strip_header: bool = False) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, {column: value})`` for each complete row of the 0-based ``rows`` of an open TSV.

    ``needs`` completes the header error ("a FarsTail TSV needs the columns ..."). A row with too few
    columns is a ``DataError``, skipped and counted with ``skip_invalid``."""
    from fatune.data.sources import select_rows, skip_or_raise  # sources dispatches to the readers using this

    reader = csv.reader(handle, delimiter="\t")
    header = [column.strip() if strip_header else column for column in next(reader, None) or []]
    if not header or any(column not in header for column in required):
        raise DataError(name, 1, f"{needs}; found {header or None}", "header", "unknown_format")

    def records():
        line_end = reader.line_num
        for row in reader:
            line, line_end = line_end + 1, reader.line_num  # report the line where the record starts
            yield line, row

    for _, (line, row) in select_rows(records(), rows, name, "rows"):
        if len(row) < len(header):
            skip_or_raise(DataError(name, line, f"expected {len(header)} tab-separated columns, found {len(row)}",
                                    None, "bad_row"), skip_invalid, stats)
            continue
        yield line, dict(zip(header, row))
