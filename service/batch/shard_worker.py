"""The worker of a sharded run: the model loaded once, shards labeled into their part files.

A plain class: the Ray driver wraps it with `ray.remote`, so this module needs no Ray and its
tests run it in-process.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from prompts.answer_cache import CachedSelector
from prompts.selector import Usage
from retrieval.errors import LabelrankError
from service.adapters import cached_answers
from service.batch.io import OutputWriter, scan_output
from service.batch.manifest import file_lock
from service.batch.report import Stats
from service.batch.run import BatchOptions, labeled_chunks
from service.batch.shards import Shard, shard_records
from service.batch.sidecar import BatchMismatchError, differences, run_config
from service.engine import Engine, open_engine
from service.pipeline import Pipeline
from service.settings import Settings

COPIES = Path(tempfile.gettempdir()) / "labelrank-index-copies"
LOCK_WAIT_S = 300.0  # a killed driver's workers die within seconds; their locks go with them


class IndexUnavailableError(LabelrankError):
    code = "index_unavailable"
    status = 503


class ShardWorker:
    """Labels whole shards with one engine; a shard resumes record by record from its part."""

    def __init__(self, settings: Settings, config: dict, options: BatchOptions,
                 niceness: int | None = None, answers: Any = None) -> None:
        self._settings = settings
        self._niceness = niceness
        self._config = config
        self._options = options
        self._answers = answers  # the run's answer cache (a Store, or the actor's RemoteStore)
        self._cached: CachedSelector | None = None
        self._engine: Engine | None = None
        self._pipeline: Pipeline | None = None
        self._copy: Path | None = None
        self._shard: int | None = None
        self._written = 0

    def start(self) -> dict[str, object]:
        """Load the model and open the index now; where this worker runs, at what niceness."""
        if self._niceness is not None:
            renice(self._niceness)
        self._ready()
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "niceness": os.getpriority(os.PRIO_PROCESS, 0)}

    def progress(self) -> tuple[int, int] | None:
        """(shard, records this worker has written to it) while a shard runs."""
        return None if self._shard is None else (self._shard, self._written)

    def peak_rss_mb(self) -> float:
        """This process's peak resident memory."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def label_shard(self, shard: Shard, part: Path) -> tuple[int, Stats]:
        """Label the records of `shard` not yet in its part file; the shard's counts."""
        engine = self._ready()
        pipeline = self._pipeline or engine.pipeline
        stats = Stats()
        hits, saved = (self._cached.hits, self._cached.saved) if self._cached else (0, Usage())

        def seen(record: dict) -> None:
            stats.count(record)
            stats.previous += 1

        with file_lock(part.with_suffix(".lock"), LOCK_WAIT_S, f"shard {shard.name}"):
            done = scan_output(part, seen)
            self._shard, self._written = shard.index, 0
            try:
                with shard_records(shard, self._config["text_field"],
                                   self._config["id_field"]) as records, \
                        OutputWriter(part) as writer:
                    todo = (r for r in records if r.key not in done)
                    for chunk in labeled_chunks(pipeline, todo, self._config["mode"],
                                                self._options, engine.settings.llm_concurrency):
                        if shard.file is not None:
                            chunk = [{"file": shard.file, **record} for record in chunk]
                        writer.write(chunk)
                        for record in chunk:
                            stats.count(record)
                        stats.written += len(chunk)
                        self._written = stats.written
            finally:
                self._shard = None
        if self._cached:
            stats.cached_answers = self._cached.hits - hits
            now = self._cached.saved
            stats.cached_usage = Usage(prompt_tokens=now.prompt_tokens - saved.prompt_tokens,
                                       completion_tokens=now.completion_tokens
                                       - saved.completion_tokens)
        return shard.index, stats

    def close(self) -> None:
        """Remove the private copy of the index."""
        if self._copy is not None:
            shutil.rmtree(self._copy.parent, ignore_errors=True)

    def _ready(self) -> Engine:
        if self._engine is None:
            settings = self._settings
            if not settings.chroma_host:
                self._copy = private_copy(settings.db)
                settings = settings.model_copy(update={"db": self._copy})
            engine = open_engine(settings)
            mine = run_config(engine, self._config["mode"], self._config["source"],
                              self._config["text_field"], self._config["id_field"])
            changed = differences(self._config, mine)
            if changed:
                raise BatchMismatchError(
                    f"the worker on {socket.gethostname()} sees another index or settings than "
                    f"the driver ({'; '.join(changed[:8])})", changed=changed)
            self._engine = engine
            if self._answers is not None and self._config["mode"] == "llm":
                self._cached = cached_answers(engine.pipeline.selector, self._answers)
                if self._cached:
                    self._pipeline = engine.pipeline.with_parts(selector=self._cached)
        return self._engine


def renice(niceness: int) -> None:
    """This process's niceness, where the system allows: anyone may raise it, lowering it
    takes CAP_SYS_NICE (the summary shows what the workers got)."""
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, niceness)


def private_copy(db: Path) -> Path:
    """A copy of the index directory that only this process opens (and may write: Chroma does
    on open); copies left by workers that were killed are removed first."""
    if not db.is_dir():
        raise IndexUnavailableError(
            f"no index directory {db} on {socket.gethostname()}: put a copy at the same path on "
            "every node, or use a Chroma server (LABELRANK_CHROMA_HOST)", path=str(db))
    COPIES.mkdir(parents=True, exist_ok=True)
    for old in COPIES.iterdir():
        pid = old.name.split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    target = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=COPIES)) / "db"
    shutil.copytree(db, target)
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
