"""Batch files: input records (JSONL, CSV or Parquet) with line numbers, and the resumable JSONL
output."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from retrieval.errors import LabelrankError, require_extra
from retrieval.rows import MissingColumnError, read_rows
from service.batch.parquet import is_parquet_name, looks_like_parquet, parquet_rows, row_count

InputFormat = Literal["auto", "jsonl", "csv", "parquet"]
Format = Literal["jsonl", "csv", "parquet"]
STDIN = "-"
_SNIFF = 1 << 16
_BINARY = {b"PAR1": "a Parquet file", b"\x1f\x8b": "gzip data", b"PK\x03\x04": "a zip archive",
           b"\xfd7zXZ": "xz data", b"\x28\xb5\x2f\xfd": "zstd data", b"ARROW1": "an Arrow file"}


class InvalidInputError(LabelrankError):
    code = "invalid_input"
    status = 422


class DuplicateIdError(InvalidInputError):
    code = "duplicate_id"


class UnsupportedFormatError(InvalidInputError):
    code = "unsupported_format"
    status = 415


class CorruptOutputError(LabelrankError):
    code = "corrupt_output"
    status = 409


@dataclass(frozen=True)
class InputRecord:
    """One input record: its line, its id (if any), and its text or the reason it has none."""

    line: int
    id: str | int | None
    text: str | None = None
    error: dict[str, object] | None = None

    @property
    def key(self) -> str:
        """What makes this record done in OUTPUT: its id, else its line number."""
        duplicate = self.error is not None and self.error.get("code") == DuplicateIdError.code
        return record_key(self.line, None if duplicate else self.id)

    def head(self) -> dict[str, object]:
        """The fields every output record starts with."""
        return {"line": self.line, "id": self.id}


def record_key(line: int, record_id: str | int | None) -> str:
    """Resume key shared by input and output records."""
    return f"line:{line}" if record_id is None else f"id:{json.dumps(record_id)}"


def output_key(record: dict) -> str:
    """The resume key of a record read back from OUTPUT."""
    error = record.get("error")
    duplicate = isinstance(error, dict) and error.get("code") == DuplicateIdError.code
    return record_key(record["line"], None if duplicate else record.get("id"))


def resolve_format(source: str, fmt: InputFormat) -> Format:
    """Parquet by a `.parquet`/`.pq` suffix, CSV by `.csv`, JSONL otherwise (stdin included),
    unless given; a file whose bytes are not that format (a Parquet file named `.jsonl`, a
    compressed file) is refused before anything is written."""
    if fmt == "auto":
        named = source != STDIN and source.lower()
        fmt = ("parquet" if named and is_parquet_name(named)
               else "csv" if named and named.endswith(".csv") else "jsonl")
    if fmt == "parquet":
        check_parquet(source)
    elif source != STDIN:
        check_text(Path(source), fmt)
    return fmt


def check_parquet(source: str) -> None:
    """UnsupportedFormatError for stdin or a file that is not Parquet: it is read by offset,
    from its footer, so neither can be read record by record."""
    if source == STDIN:
        raise UnsupportedFormatError("Parquet cannot be read from stdin (its index is at the "
                                     "end of the file): pass the file's path", format="parquet")
    path = Path(source)
    if not path.is_file():
        return  # opening it says so
    if not looks_like_parquet(path):
        raise UnsupportedFormatError(
            f"{path} is not a Parquet file (no PAR1 magic at both ends; cut short?): name "
            "JSONL or CSV files .jsonl or .csv, or pass --input-format", path=str(path))
    require_extra("pyarrow", "parquet")
    import pyarrow as pa

    try:
        row_count(path)
    except (pa.ArrowException, OSError) as exc:
        raise UnsupportedFormatError(f"{path}: the Parquet footer cannot be read ({exc})",
                                     path=str(path)) from None


def check_text(path: Path, fmt: str) -> None:
    """UnsupportedFormatError when the file starts as a binary format does: read as lines, it
    would give one `invalid_input` record per run of bytes instead of one error."""
    if not path.is_file():
        return  # opening it says so
    with path.open("rb") as handle:
        head = handle.read(_SNIFF)
    kind = next((name for magic, name in _BINARY.items() if head.startswith(magic)), None)
    if kind is None and b"\x00" in head:  # never in UTF-8 JSON or CSV text
        kind = "binary data"
    if kind:
        hint = ("name it .parquet or pass --input-format parquet" if kind == "a Parquet file"
                else "convert it first")
        raise UnsupportedFormatError(
            f"{path} is {kind}, not {fmt.upper()} text: batch reads JSONL, CSV or Parquet "
            f"files; {hint}", path=str(path), format=kind)


@contextlib.contextmanager
def open_input(source: str) -> Iterator[BinaryIO]:
    """The input as bytes: a file, or stdin for `-`."""
    if source == STDIN:
        yield sys.stdin.buffer
        return
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"input file not found: {source}", path=source)
    with path.open("rb") as handle:
        yield handle


def count_records(source: str, fmt: Format) -> int | None:
    """About how many records the input holds (lines; Parquet rows exactly), for the ETA;
    None for stdin."""
    if source == STDIN or not Path(source).is_file():
        return None
    if fmt == "parquet":
        return row_count(source)
    lines, last = 0, b"\n"
    with open(source, "rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return max(lines - (fmt == "csv"), 0)


def read_records(stream: BinaryIO, fmt: Format, text_field: str = "text", id_field: str = "id",
                 first_line: int = 1, count: int | None = None) -> Iterator[InputRecord]:
    """Every input record in order; unreadable ones carry an `invalid_input` error. A JSONL
    stream that starts further down its file (a shard) numbers its lines from `first_line`; a
    Parquet file is read from row `first_line` (rows count as lines), `count` rows of it."""
    try:
        if fmt == "parquet":
            rows = parquet_rows(stream, text_field, id_field, first_line - 1, count)
        else:
            rows = read_rows(stream, fmt, required=text_field if fmt == "csv" else None,
                             first_line=first_line)
        seen: dict[str, int] = {}
        for row in rows:
            yield _record(row.line, row.data, row.problem, text_field, id_field, seen)
    except MissingColumnError as exc:
        raise InvalidInputError(str(exc), field=text_field) from None


def _record(line: int, row: dict | None, problem: str | None, text_field: str, id_field: str,
            seen: dict[str, int]) -> InputRecord:
    if row is None:
        return _bad(line, None, problem or "unreadable")
    raw_id = row.get(id_field)
    record_id = None if raw_id in (None, "") else raw_id
    if record_id is not None and (isinstance(record_id, bool)
                                  or not isinstance(record_id, str | int)):
        return _bad(line, None, f"field {id_field!r} must be a string or an integer")
    if record_id is not None:
        key = record_key(line, record_id)
        if key in seen:
            return InputRecord(line, record_id, error=duplicate_error(line, record_id, seen[key]))
        seen[key] = line
    text = row.get(text_field)
    if text is None:
        return _bad(line, record_id, f"field {text_field!r} is null" if text_field in row
                    else f"no {text_field!r} field")
    if not isinstance(text, str):
        return _bad(line, record_id, f"field {text_field!r} must be a string, "
                                     f"not {type(text).__name__}")
    return InputRecord(line, record_id, text)


def duplicate_error(line: int, record_id: str | int, first_line: int,
                    first_file: str | None = None) -> dict[str, object]:
    """The `duplicate_id` error of a record whose id appeared first on `first_line`."""
    where = f"line {first_line}" + (f" of {first_file}" if first_file else "")
    return DuplicateIdError(f"line {line}: id {record_id!r} already appeared on {where}",
                            line=line, first_line=first_line).to_dict()


def _bad(line: int, record_id: str | int | None, problem: str) -> InputRecord:
    error = InvalidInputError(f"line {line}: {problem}", line=line)
    return InputRecord(line, record_id, error=error.to_dict())


def scan_output(path: Path, on_record: Callable[[dict], None]) -> set[str]:
    """Keys of the records already in OUTPUT; a torn last line (from a kill) is cut off."""
    if not path.exists():
        return set()
    keys: set[str] = set()
    good = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                break  # only the last line can lack its newline: the write it came from died
            try:
                record = json.loads(raw)
                keys.add(output_key(record))
            except (ValueError, KeyError, TypeError):
                raise CorruptOutputError(
                    f"{path}:{number}: not a labelrank batch record; remove the line or choose "
                    "another OUTPUT", path=str(path), line=number) from None
            on_record(record)
            good += len(raw)
    if good < path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(good)
    return keys


class OutputWriter:
    """Appends records to OUTPUT, each chunk flushed and synced before the next."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")

    def write(self, records: list[dict]) -> None:
        """Append whole lines, then flush them to disk."""
        if not records:
            return
        self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                 for r in records).encode())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
