"""Line-numbered rows of JSONL and CSV files: one reader for catalogs, examples, batches, gold sets.

A row that cannot be read is yielded with the problem instead of raised, so a batch can turn it
into an error record and a catalog load into an error naming the line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

Format = Literal["jsonl", "csv"]
_CSV_FIELD_LIMIT = 1 << 26  # let oversized texts reach the pipeline's own length check


@dataclass(frozen=True)
class Row:
    """One record of a file: its first line number, its fields, or why it has none."""

    line: int
    data: dict | None
    problem: str | None = None


class MissingColumnError(ValueError):
    """Raised when a CSV header lacks a column the caller needs."""


def format_of(name: str) -> Format:
    """CSV by the `.csv` suffix, JSONL otherwise."""
    return "csv" if name.lower().endswith(".csv") else "jsonl"


def read_rows(stream: BinaryIO, fmt: Format, skip_blank: bool = False,
              required: str | None = None, first_line: int = 1) -> Iterator[Row]:
    """Every record of a JSONL or CSV stream, in order (blank lines skipped or reported).
    A JSONL stream may start further down its file: lines are numbered from `first_line`."""
    if fmt == "csv":
        return csv_rows(stream, skip_blank=skip_blank, required=required)
    return jsonl_rows(stream, skip_blank=skip_blank, first_line=first_line)


def jsonl_rows(stream: BinaryIO, skip_blank: bool = False, first_line: int = 1) -> Iterator[Row]:
    """One JSON object per line; a line that is not one comes with the reason."""
    for line, raw in enumerate(stream, start=first_line):
        try:
            text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            yield Row(line, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start + 1})")
            continue
        if not text.strip():
            if not skip_blank:
                yield Row(line, None, "blank line")
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Row(line, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            yield Row(line, None, "not valid JSON (nested too deeply)")
            continue
        if not isinstance(data, dict):
            yield Row(line, None, f"expected a JSON object, not {type(data).__name__}")
            continue
        yield Row(line, data)


def csv_rows(stream: BinaryIO, skip_blank: bool = False, required: str | None = None,
             short_ok: bool = False) -> Iterator[Row]:
    """Rows keyed by the header; `required` must be a column (MissingColumnError otherwise).
    With `short_ok`, a row with fewer fields than the header leaves the rest out."""
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace",
                                         newline=""))
    header = next(reader, None)
    if header is None:
        return
    if required is not None and required not in header:
        raise MissingColumnError(f"the CSV header has no {required!r} column "
                                 f"(columns: {', '.join(header)})")
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Row(start, None, f"malformed CSV ({exc})")
        else:
            if not fields:
                if not skip_blank:
                    yield Row(start, None, "blank line")
            elif len(fields) > len(header) or (len(fields) < len(header) and not short_ok):
                yield Row(start, None, f"{len(fields)} fields where the header has {len(header)}")
            else:
                yield Row(start, dict(zip(header, fields, strict=False)))
        start = reader.line_num + 1
