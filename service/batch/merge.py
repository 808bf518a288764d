"""One output file (JSONL, or Parquet by its name), in input order, from the part files of a
finished sharded run."""

from __future__ import annotations

import json
import os
from pathlib import Path

from retrieval.errors import LabelrankError
from service.batch.io import CorruptOutputError, DuplicateIdError, duplicate_error, record_key
from service.batch.manifest import ShardedOutput, read_done
from service.batch.parquet_output import is_parquet_output, jsonl_records, write_parquet
from service.batch.shards import Shard
from service.batch.sidecar import read_meta


class UnfinishedRunError(LabelrankError):
    code = "unfinished_run"
    status = 409


def merge_parts(root: Path, target: Path) -> int:
    """Write every record to `target` in input order; returns how many ids repeated across
    shards were turned into `duplicate_id` records (a worker sees only its own shard)."""
    manifest = read_meta(root / "manifest.json")
    if not manifest or "shards" not in manifest:
        raise UnfinishedRunError(f"{root} holds no sharded run (no manifest.json)",
                                 path=str(root))
    shards = [Shard(**s) for s in manifest["shards"]]
    out = ShardedOutput(root, shards, read_done(root / "done.jsonl"), manifest["total"])
    missing = [s.name for s in shards if s.index not in out.done]
    if missing:
        raise UnfinishedRunError(
            f"{len(missing)} of {len(shards)} shards are not finished (first: {missing[0]}); "
            "run the same command again first", missing=len(missing))
    first_seen: dict[str, tuple[int, str | None]] = {}
    repeated = 0
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("wb") as handle:
        for shard in shards:
            records = _part(out.part(shard), out.done[shard.index].records)
            for record in sorted(records, key=lambda r: r["line"]):
                record, moved = _first_or_duplicate(record, first_seen, shard.file)
                repeated += moved
                handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())
    if is_parquet_output(target):
        write_parquet(target, [lambda: jsonl_records(tmp)])
        tmp.unlink()
    else:
        os.replace(tmp, target)
    return repeated


def _part(path: Path, expected: int) -> list[dict]:
    """A finished part's records; they must be as many as its done-log line says."""
    records = []
    for number, line in enumerate(path.read_bytes().splitlines() if path.exists() else [], 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise CorruptOutputError(f"{path}:{number}: not a labelrank batch record",
                                     path=str(path), line=number) from None
    if len(records) != expected:
        raise CorruptOutputError(f"{path} holds {len(records)} records where the done log "
                                 f"says {expected}", path=str(path))
    return records


def _first_or_duplicate(record: dict, first_seen: dict[str, tuple[int, str | None]],
                        file: str | None) -> tuple[dict, bool]:
    """The record, or its `duplicate_id` form when its id appeared earlier in the input."""
    if record.get("id") is None:
        return record, False
    key = record_key(0, record["id"])
    if key not in first_seen:
        first_seen[key] = (record["line"], file)
        return record, False
    first_line, first_file = first_seen[key]
    error = record.get("error")
    was = isinstance(error, dict) and error.get("code") == DuplicateIdError.code
    head = {k: record[k] for k in ("file", "line", "id") if k in record}
    where = first_file if first_file != file else None
    return {**head, "error": duplicate_error(record["line"], record["id"], first_line, where)}, \
        not was
