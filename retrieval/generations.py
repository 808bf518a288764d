"""Index generations: the collections a compaction rebuilds, and the gate its switch closes.

Chroma's embedded HNSW graph never reuses a slot: every vector written takes a new one and a
deleted or replaced vector stays as a tombstone, in memory and on disk (1.7 KB per 384-d vector,
measured: 12.5 KB per label created, renamed and deleted). A compaction copies the live rows
into a fresh pair of collections, the next generation, switches to it with one metadata write,
drops the old pair and reopens the client: Chroma frees a dropped collection's graph only when
its client's system stops (measured: each copy-and-drop without a reopen kept 5-10 MB). It also
makes the next start load live slots only, where it loaded every dead one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import chromadb
from chromadb.errors import NotFoundError

from retrieval.iterables import chunks
from retrieval.journal import Journal

COMPLETE = "complete"  # set on a generation's vectors collection once it holds every row
# The defaults of LABELRANK_COMPACT_DEAD_RATIO and LABELRANK_COMPACT_MIN_DEAD_SLOTS: compact
# once dead graph slots outnumber half the live ones and 50,000. A compaction has a cost of its
# own: each reopened client's system keeps memory the old one does not give back (compacting
# every 500 dead slots plateaued 50 MB above never compacting, after 5,000 dead slots that
# cost 9 MB), about what 30,000 dead slots hold. Past that, dead slots grow without bound and
# compaction bounds them.
COMPACT_RATIO = 0.5
COMPACT_MIN = 50_000
_COPY_LABELS = 256
_COPY_BATCH = 4096


def names(name: str, generation: int) -> tuple[str, str]:
    """The vectors and labels collections of a generation (0 keeps the original names)."""
    suffix = "" if generation == 0 else f"-g{generation}"
    return f"{name}-vectors{suffix}", f"{name}-labels{suffix}"


def current(client, name: str) -> int:
    """The newest complete generation stored (0 for a fresh or never compacted index)."""
    stored = {collection.name for collection in client.list_collections()}
    best = 0
    for collection_name in stored:
        prefix = f"{name}-vectors-g"
        if not collection_name.startswith(prefix) or not collection_name[len(prefix):].isdigit():
            continue
        generation = int(collection_name[len(prefix):])
        vectors, labels = names(name, generation)
        if generation > best and labels in stored and (
                client.get_collection(vectors).metadata or {}).get(COMPLETE):
            best = generation
    return best


def leftovers(client, name: str, keep: int) -> list[str]:
    """Collections of other generations than `keep`: older ones a switch left behind, newer
    ones a compaction did not finish."""
    kept = set(names(name, keep))
    return sorted(collection.name for collection in client.list_collections()
                  if collection.name.startswith((f"{name}-vectors", f"{name}-labels"))
                  and collection.name not in kept)


class Gate:
    """Many readers at a time, or the one switch that waits for them all to leave."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._closed = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the gate open for one Chroma call (never nest: a closing switch would wait)."""
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def closed(self) -> Iterator[None]:
        """Keep readers out, once the ones inside have left."""
        with self._cond:
            self._closed = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()


class Compaction:
    """Compaction for the label index (a mixin: it works on LabelIndex's collections, lock,
    gate and counters, and its writes mark the labels they touch in `_dirty`)."""

    _client: Any
    _name: str
    _generation: int
    _vectors: Any
    _records: Any
    _journal: Journal
    _lock: threading.RLock
    _gate: Gate
    _dirty: set[str] | None
    _slots: int
    _count: int
    _labels: dict
    compact_ratio: float
    compact_min: int

    def _open(self, generation: int) -> tuple[Any, Any]:
        raise NotImplementedError

    def dead_slots(self) -> int:
        """Graph slots still held by deleted or replaced vectors and label records."""
        return max(0, self._slots - self._count - len(self._labels))

    def compaction_due(self, ratio: float | None = None, minimum: int | None = None) -> bool:
        """Whether dead slots outnumber `ratio` of the live ones, and `minimum` (by default the
        index's own thresholds, `compact_ratio` and `compact_min`)."""
        ratio = self.compact_ratio if ratio is None else ratio
        minimum = self.compact_min if minimum is None else minimum
        live = self._count + len(self._labels)
        return self.compactable() and self.dead_slots() > max(minimum, ratio * live)

    def compactable(self) -> bool:
        """Only an embedded index is compacted here; a Chroma server keeps its own graphs."""
        chroma = self._client.get_settings()
        return bool(chroma.is_persistent and chroma.persist_directory
                    and not chroma.chroma_server_host)

    def compact(self) -> int:
        """Copy the live rows into the next generation and switch to it; returns the dead slots
        dropped. Label writes go on while rows are copied (the labels they touch are copied
        again at the end); searches wait only while the client is reopened."""
        if not self.compactable():
            return 0
        with self._lock:
            self._drop(leftovers(self._client, self._name, self._generation))
            target = self._generation + 1
            vectors, records = self._open(target)
            label_ids, self._dirty = list(self._labels), set()
        try:
            for chunk in chunks(label_ids, _COPY_LABELS):
                self._copy(chunk, vectors, records)
            with self._lock:
                dirty, self._dirty = sorted(self._dirty), None
                for chunk in chunks(dirty, _COPY_LABELS):
                    self._copy(chunk, vectors, records, again=True)
                dropped, self._slots = self.dead_slots(), self._count + len(self._labels)
                vectors.modify(metadata={**(self._vectors.metadata or {}), "slots": self._slots,
                                         COMPLETE: True})
                self._switch(target)
                return dropped
        finally:
            self._dirty = None

    def _copy(self, label_ids: list[str], vectors, records, again: bool = False) -> None:
        """Copy labels' vectors and records into another generation (`again`: replacing what
        an earlier pass copied of them)."""
        include = ["embeddings", "documents", "metadatas"]
        with self._gate.reading():
            rows = self._vectors.get(where={"label_id": {"$in": label_ids}}, include=include)
            labels = self._records.get(ids=label_ids, include=include)
        if again:
            copied = vectors.get(where={"label_id": {"$in": label_ids}}, include=[])["ids"]
            if copied:
                vectors.delete(ids=copied)
            records.delete(ids=label_ids)
        for found, target in ((rows, vectors), (labels, records)):
            for start in range(0, len(found["ids"]), _COPY_BATCH):
                end = start + _COPY_BATCH
                target.add(ids=found["ids"][start:end],
                           embeddings=found["embeddings"][start:end],
                           documents=found["documents"][start:end],
                           metadatas=found["metadatas"][start:end])

    def _switch(self, generation: int) -> None:
        """Serve `generation` from a new client; the old generation is dropped and its graphs
        freed with the old client's system (readers wait meanwhile)."""
        chroma = self._client.get_settings()
        with self._gate.closed():
            self._drop(names(self._name, self._generation))
            self._client.close()
            self._client = chromadb.PersistentClient(path=chroma.persist_directory,
                                                     settings=chroma)
            self._generation = generation
            self._vectors, self._records = self._open(generation)
            self._journal = Journal(self._client, self._name)

    def _drop(self, collections: Sequence[str]) -> None:
        for collection in collections:
            with contextlib.suppress(NotFoundError):
                self._client.delete_collection(collection)

