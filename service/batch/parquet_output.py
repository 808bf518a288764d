"""Parquet batch output: records journaled as JSONL while a run goes, one Parquet file at its end.

A Parquet file cannot be appended to (its index is a footer written last), so a run appends
each chunk to `OUTPUT.partial.jsonl` (flushed and fsynced: the one-file resume as for JSONL) and
then writes OUTPUT once, atomically (a temporary file, then a rename), and removes the journal.
A rerun takes the keys of a finished OUTPUT and of the journal; a journal whose keys are
already in OUTPUT was folded in just before a kill and is removed instead of being counted twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from retrieval.errors import require_extra
from retrieval.iterables import chunks
from service.batch.io import CorruptOutputError, output_key, scan_output
from service.batch.parquet import is_parquet_name, parquet_file

CHUNK = 10_000
# What the keys and the summary's counts need from a finished output.
COUNTED = ("line", "id", "error", "degraded", "reason", "usage")


def is_parquet_output(path: Path) -> bool:
    """OUTPUT is written as Parquet when its name ends in .parquet or .pq."""
    return is_parquet_name(path)


def journal_path(output: Path) -> Path:
    """`OUTPUT.partial.jsonl`: the records of a Parquet output not yet in it."""
    return output.with_name(output.name + ".partial.jsonl")


def scan_parquet_output(output: Path, on_record: Callable[[dict], None]) -> set[str]:
    """Keys of the records in a finished OUTPUT and in its journal, each counted once."""
    keys = set()
    if output.exists():
        for record in parquet_records(output, COUNTED):
            keys.add(output_key(record))
            on_record(record)
    journal = journal_path(output)
    if keys and journal.exists() and scan_output(journal, lambda record: None) & keys:
        journal.unlink()  # folded into OUTPUT by a run killed before it could remove it
    return keys | scan_output(journal, on_record)


def finish_parquet_output(output: Path) -> None:
    """Fold the journal into OUTPUT (after the records already there) and remove it."""
    journal = journal_path(output)
    if not journal.exists():
        return
    if output.exists() and not journal.stat().st_size:  # a rerun that found nothing to do
        journal.unlink()
        return
    sources: list[Callable[[], Iterable[dict]]] = []
    if output.exists():
        sources.append(lambda: parquet_records(output))
    sources.append(lambda: jsonl_records(journal))
    write_parquet(output, sources)
    journal.unlink()


def write_parquet(target: Path, sources: list[Callable[[], Iterable[dict]]]) -> int:
    """Write the records of `sources` (each called twice: once for the schema, once to write)
    to `target` atomically; returns how many. Nested fields (labels, candidates, usage, error)
    stay nested; a field a record lacks is null. Integer ids stay integers unless strings are
    among them: then all are written as strings (a column has one type)."""
    require_extra("pyarrow", "parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas, id_kinds = [], set()
    for source in sources:
        for chunk in chunks(source(), CHUNK):
            id_kinds.update(type(r.get("id")) for r in chunk if r.get("id") is not None)
            schemas.append(_table([_id_as_text(r) for r in chunk]).schema)
    as_text = id_kinds != {int}
    try:
        schema = pa.unify_schemas(schemas or [pa.schema([("line", pa.int64())])],
                                  promote_options="permissive")
    except pa.ArrowException as exc:
        raise CorruptOutputError(f"the records for {target} cannot share one Parquet schema "
                                 f"({exc})", path=str(target)) from None
    if "id" in schema.names:
        schema = schema.set(schema.get_field_index("id"),
                            pa.field("id", pa.string() if as_text else pa.int64()))
    tmp = target.with_name(target.name + ".writing")  # not .tmp: a merge's JSONL is there
    written = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        for source in sources:
            for chunk in chunks(source(), CHUNK):
                if as_text:
                    chunk = [_id_as_text(r) for r in chunk]
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                written += len(chunk)
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return written


def _table(records: list[dict]) -> Any:
    """Records as an Arrow table with a column for every field any of them has
    (`Table.from_pylist` takes the fields of the first record only)."""
    import pyarrow as pa

    fields = list(dict.fromkeys(key for record in records for key in record))
    return pa.table({key: pa.array([r.get(key) for r in records]) for key in fields})


def _id_as_text(record: dict) -> dict:
    value = record.get("id")
    return record if value is None or isinstance(value, str) else {**record, "id": str(value)}


def parquet_records(path: Path, columns: Iterable[str] | None = None) -> Iterator[dict]:
    """The records of a Parquet output (only `columns` of them, those it has, when given)."""
    file: Any = parquet_file(path)
    names = file.schema_arrow.names
    wanted = None if columns is None else [c for c in columns if c in names]
    for batch in file.iter_batches(batch_size=CHUNK, columns=wanted):
        yield from batch.to_pylist()


def jsonl_records(path: Path) -> Iterator[dict]:
    """The records of a JSONL file (whole lines only)."""
    with path.open("rb") as handle:
        for raw in handle:
            if raw.endswith(b"\n"):
                yield json.loads(raw)
