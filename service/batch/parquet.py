"""Parquet batch input: rows numbered from 1, only the text and id columns read (pyarrow)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from retrieval.errors import require_extra
from retrieval.rows import MissingColumnError, Row

MAGIC = b"PAR1"
BATCH_ROWS = 4096


def is_parquet_name(name: str | Path) -> bool:
    """A `.parquet` (or `.pq`) file name: how batch picks Parquet input and output."""
    return str(name).lower().endswith((".parquet", ".pq"))


def looks_like_parquet(path: Path) -> bool:
    """The file starts and ends with Parquet's magic bytes."""
    with path.open("rb") as handle:
        head = handle.read(4)
        if path.stat().st_size < 8:
            return False
        handle.seek(-4, 2)
        return head == MAGIC and handle.read(4) == MAGIC


def parquet_file(source: str | Path | IO[bytes]) -> Any:
    """The opened `pyarrow.parquet.ParquetFile`."""
    require_extra("pyarrow", "parquet")
    import pyarrow.parquet as pq

    return pq.ParquetFile(source)


def row_count(source: str | Path | IO[bytes]) -> int:
    """Rows in the file, from its footer."""
    return parquet_file(source).metadata.num_rows


def parquet_rows(source: str | Path | IO[bytes], text_field: str, id_field: str,
                 start: int = 0, count: int | None = None) -> Iterator[Row]:
    """Rows `start`..`start + count` (all from `start` when None) as {text, id} dicts, each
    numbered by its row (the first is 1). A row group that cannot be decoded yields one
    problem row per row it holds (the footer says how many), so nothing is dropped."""
    file = parquet_file(source)
    names = file.schema_arrow.names
    if text_field not in names:
        raise MissingColumnError(f"the Parquet file has no {text_field!r} column "
                                 f"(columns: {', '.join(names)})")
    columns = [text_field] + ([id_field] if id_field in names and id_field != text_field else [])
    meta = file.metadata
    end = meta.num_rows if count is None else min(meta.num_rows, start + count)
    first = 0
    for group in range(meta.num_row_groups):
        size = meta.row_group(group).num_rows
        lo, hi = max(start, first), min(end, first + size)
        if lo < hi:
            yield from _group_rows(file, group, columns, first, lo, hi)
        first += size
        if first >= end:
            return


def _group_rows(file: Any, group: int, columns: list[str], first: int, lo: int,
                hi: int) -> Iterator[Row]:
    """Rows lo..hi of one row group (which starts at row `first`)."""
    import pyarrow as pa

    try:
        table = file.read_row_group(group, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        reason = f"row group {group} of the Parquet file cannot be read ({type(exc).__name__})"
        for row in range(lo, hi):
            yield Row(row + 1, None, reason)
        return
    for offset in range(lo - first, hi - first, BATCH_ROWS):
        piece = table.slice(offset, min(BATCH_ROWS, hi - first - offset))
        values = {name: piece.column(name).to_pylist() for name in columns}
        for i in range(piece.num_rows):
            yield Row(first + offset + i + 1, {name: values[name][i] for name in columns})
