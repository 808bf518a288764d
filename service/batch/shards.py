"""A batch input (one file or a directory of files) cut into shards that one worker labels alone."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

from service.batch.io import (
    Format,
    InputFormat,
    InputRecord,
    InvalidInputError,
    read_records,
    resolve_format,
)
from service.batch.parquet import row_count

SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class Shard:
    """`lines` lines of one input file from byte `start` (numbered from `first_line`), or a
    whole file when `lines` is None; of a Parquet file, `lines` rows from row `first_line`.
    `file` names the file in a directory input."""

    index: int
    path: str
    fmt: Format
    file: str | None = None
    start: int = 0
    first_line: int = 1
    lines: int | None = None

    @property
    def name(self) -> str:
        """The shard's name in the output directory."""
        return f"{self.index:05d}"

    def to_dict(self) -> dict[str, object]:
        """The shard as it is kept in the manifest."""
        return asdict(self)


def input_files(source: Path) -> list[Path]:
    """The file itself, or every JSONL/CSV/Parquet file under a directory (sorted, hidden ones
    skipped)."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise InvalidInputError(f"input not found: {source}", path=str(source))
    files = sorted(p for p in source.rglob("*") if p.is_file()
                   and p.suffix.lower() in SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(source).parts))
    if not files:
        raise InvalidInputError(f"no {', '.join(SUFFIXES)} files under {source}",
                                path=str(source))
    return files


def plan_shards(source: Path, fmt: InputFormat, shard_size: int) -> list[Shard]:
    """Shards of at most `shard_size` lines (Parquet: rows), in input order. A CSV file is one
    shard: a quoted field may span lines, so only its reader can tell where a record ends."""
    shards: list[Shard] = []
    for path in input_files(source):
        name = str(path.relative_to(source)) if source.is_dir() else None
        kind = resolve_format(str(path), fmt)
        if kind == "csv":
            shards.append(Shard(len(shards), str(path), kind, name))
            continue
        if kind == "parquet":
            rows = row_count(path)
            for start in range(0, rows, shard_size):
                shards.append(Shard(len(shards), str(path), kind, name, first_line=start + 1,
                                    lines=min(shard_size, rows - start)))
            continue
        for start, first_line, lines in line_ranges(path, shard_size):
            shards.append(Shard(len(shards), str(path), kind, name, start, first_line, lines))
    return shards


def line_ranges(path: Path, size: int) -> Iterator[tuple[int, int, int]]:
    """(start byte, first line, line count) of consecutive runs of `size` lines."""
    start = offset = 0
    first = line = 1
    with path.open("rb") as handle:
        for raw in handle:
            offset += len(raw)
            if line - first + 1 == size:
                yield start, first, size
                start, first = offset, line + 1
            line += 1
    if line > first:
        yield start, first, line - first


@contextlib.contextmanager
def shard_records(shard: Shard, text_field: str, id_field: str) -> Iterator[Iterator[InputRecord]]:
    """The input records of one shard, numbered by their line in the file."""
    with open(shard.path, "rb") as handle:
        if shard.fmt == "parquet":
            yield read_records(handle, "parquet", text_field, id_field, shard.first_line,
                               shard.lines)
            return
        if shard.lines is None:
            yield read_records(handle, shard.fmt, text_field, id_field)
            return
        handle.seek(shard.start)
        stream = io.BytesIO(b"".join(islice(handle, shard.lines)))
        yield read_records(stream, shard.fmt, text_field, id_field, shard.first_line)
