"""The output directory of a sharded run: manifest, done log, one part file per shard, locks.

`manifest.json` holds what decides the records (index fingerprint, settings, as the sidecar of a
one-file run does) and the shard plan, fixed at the first run. `done.jsonl` gets one line per
finished shard with its counts. `parts/NNNNN.jsonl` holds the shard's records; only the process
holding `parts/NNNNN.lock` writes it, so a retried shard never has two writers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import LabelrankError
from service.batch.io import CorruptOutputError, InputFormat, count_records
from service.batch.report import Stats
from service.batch.shards import Shard, plan_shards
from service.batch.sidecar import BatchMismatchError, checked, read_meta, write_meta


class OutputBusyError(LabelrankError):
    code = "output_busy"
    status = 409


@dataclass
class ShardedOutput:
    """An output directory with its shard plan and the shards already done."""

    root: Path
    shards: list[Shard]
    done: dict[int, Stats]
    total: int

    @property
    def manifest(self) -> Path:
        """`OUT/manifest.json`."""
        return self.root / "manifest.json"

    def part(self, shard: Shard) -> Path:
        """The part file of a shard."""
        return self.root / "parts" / f"{shard.name}.jsonl"

    def mark_done(self, shard: Shard, stats: Stats) -> None:
        """Append the shard's line to the done log, on disk before returning."""
        line = json.dumps({"shard": shard.index, "stats": stats.to_dict()}) + "\n"
        with (self.root / "done.jsonl").open("ab") as handle:
            handle.write(line.encode())
            handle.flush()
            os.fsync(handle.fileno())
        self.done[shard.index] = stats


def open_output(root: Path, source: Path, fmt: InputFormat, shard_size: int, config: dict,
                force: bool) -> ShardedOutput:
    """Plan the shards (or read the plan of an earlier run), check the config, record both."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "manifest.json"
    previous = read_meta(path)
    if previous and "shards" in previous:
        _same_input(previous, source)
        shards = [Shard(**s) for s in previous["shards"]]
        shard_size, total = previous["shard_size"], previous["total"]
    else:
        shards = plan_shards(source, fmt, shard_size)
        total = sum(s.lines if s.lines is not None else count_records(s.path, s.fmt) or 0
                    for s in shards)
    done = read_done(root / "done.jsonl")
    parts = root / "parts"
    has_records = bool(done) or any(p.stat().st_size for p in parts.glob("*.jsonl"))
    content = checked(path, previous, config, has_records, force)
    inputs = {s.path: Path(s.path).stat().st_size for s in shards}
    write_meta(path, {**content, "source": str(source), "inputs": inputs, "total": total,
                      "shard_size": shard_size, "shards": [s.to_dict() for s in shards]})
    parts.mkdir(exist_ok=True)
    return ShardedOutput(root, shards, done, total)


def _same_input(previous: dict, source: Path) -> None:
    """The plan of an earlier run holds only for the same, unchanged input files."""
    if previous.get("source") != str(source):
        raise BatchMismatchError(f"the output was planned for {previous.get('source')}, not "
                                 f"{source}; choose another OUTPUT", source=str(source))
    for name, size in previous.get("inputs", {}).items():
        now = Path(name).stat().st_size if Path(name).is_file() else None
        if now != size:
            raise BatchMismatchError(f"{name} changed since this output was planned (size "
                                     f"{size} -> {now}); choose another OUTPUT", path=name)


def read_done(path: Path) -> dict[int, Stats]:
    """Counts of the finished shards; a torn last line (from a kill) is cut off."""
    done: dict[int, Stats] = {}
    if not path.exists():
        return done
    good = 0
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        if not raw.endswith(b"\n"):
            break
        try:
            entry = json.loads(raw)
            done[entry["shard"]] = Stats.from_dict(entry["stats"])
        except (ValueError, KeyError, TypeError):
            raise CorruptOutputError(f"{path}:{number}: not a done-log line; remove the line "
                                     "(its shard is then checked again)", path=str(path),
                                     line=number) from None
        good += len(raw)
    if good < path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(good)
    return done


@contextlib.contextmanager
def file_lock(path: Path, wait_s: float = 0.0, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on `path` (flock: released by the kernel when its holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OutputBusyError(f"{what or path} is being written by another "
                                          "process", path=str(path)) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
