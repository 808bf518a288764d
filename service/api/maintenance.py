"""Upkeep of a long-running server, on a background thread: hand freed memory back to the
system, and compact the index once label churn has left enough dead graph slots.

Measured under the soak (bench/soak.py): Python's own heap stays flat (tracemalloc, +0.03 MB
over 1,200 requests) while RSS climbs, because glibc keeps memory that Chroma's queries and
ONNX runs have freed, in one arena per thread; `malloc_trim(0)` gave back 170-240 MB after
2,000 searches or embeddings in a loop. Label churn adds real growth on top: Chroma's graph
never reuses a slot (see retrieval/generations.py), which compaction bounds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable
from functools import lru_cache

from retrieval.index import LabelIndex

log = logging.getLogger("labelrank.maintenance")
EVERY_S = 30.0


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def trim_heap() -> bool:
    """Give the heap pages that malloc holds free back to the system; False where malloc
    cannot (no glibc)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


class Maintenance:
    """Every `every_s` seconds: trim the heap, and compact the index once its dead slots
    outnumber `ratio` of the live ones and `minimum` (None: the index's own thresholds, as
    LABELRANK_COMPACT_DEAD_RATIO and LABELRANK_COMPACT_MIN_DEAD_SLOTS set them)."""

    def __init__(self, index: Callable[[], LabelIndex | None], every_s: float = EVERY_S,
                 on_compacted: Callable[[int, float], None] | None = None,
                 ratio: float | None = None, minimum: int | None = None) -> None:
        self.index = index
        self.every_s = every_s
        self.on_compacted = on_compacted
        self.ratio, self.minimum = ratio, minimum
        self._round = threading.Lock()  # one round at a time, whoever calls it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run in a daemon thread until `stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="labelrank-maintenance",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current round (a compaction under way finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def run_once(self) -> int:
        """One round; returns the dead slots a compaction dropped (0 when none ran)."""
        with self._round:
            dropped = 0
            index = self.index()
            if index is not None and index.compaction_due(self.ratio, self.minimum):
                started = time.perf_counter()
                dropped = index.compact()
                seconds = time.perf_counter() - started
                log.info("compacted the index: %d dead graph slots dropped in %.1f s",
                         dropped, seconds)
                if self.on_compacted:
                    self.on_compacted(dropped, seconds)
            trim_heap()
            return dropped

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.run_once()
            except Exception:  # upkeep must not take the server down; the next round retries
                log.exception("index maintenance failed")
