"""The label index: every label as several vectors in Chroma, plus its metadata beside them."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval import generations
from retrieval.catalog import Catalog, Label
from retrieval.embedder import Embedder
from retrieval.errors import EmptyIndexError, IndexMismatchError, UnknownLabelError
from retrieval.generations import Compaction, Gate
from retrieval.head import EXAMPLES, HeadInfo, HeadRow, HeadTable, LabelHead, examples_digest
from retrieval.iterables import chunks
from retrieval.journal import STALE_S, Journal

SCHEMA_VERSION = 1
KINDS = ("name", "alias", "description", "example", "prototype")
PROTOTYPE = "prototype"
_WRITE_BATCH = 4096
_LABEL_CHUNK = 256
_PAGE = 5000
# Chroma turns one query batch into SQL with a bounded number of variables.
_QUERY_BATCH = 256
_MAX_ROWS = 25_000
# Chroma fails a query whose graph hit a concurrent write has just deleted ("Error finding
# id", met by the soak across compactions, or "Error getting embedding"); asked again, it
# answers from the state after the write.
_QUERY_ATTEMPTS = 5
_RACED_WRITE = ("Error finding id", "Error getting embedding")
# Chroma persists the HNSW graph every `sync_threshold` vectors written and rebuilds the rest
# at each open from its log, inserting in parallel in an order of its own: each process then
# searched a graph of its own (two runs of one batch: 324 of 2,000 CLINC150 shortlists
# differed). 1 persists at the end of every write: every open loads the graph the writer had.
_SYNC_THRESHOLD = 1

ProgressCallback = Callable[[int], None]


@dataclass(slots=True)  # not frozen: searches build ~100 per text, and frozen init is 4x slower
class Hit:
    """One neighbour vector of a query: which label and which of its texts."""

    label_id: str
    kind: str
    text: str
    similarity: float
    rank: int
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)
    vector_id: str = ""


@dataclass(frozen=True)
class StoredVector:
    """One vector as stored: its id, label, kind of text, the text and the embedding."""

    vector_id: str
    label_id: str
    kind: str
    text: str
    vector: np.ndarray = field(compare=False, repr=False)


@dataclass(frozen=True)
class _ChunkPlan:
    """One chunk of labels to write: their wanted vectors, which are new, which are stale."""

    labels: list[Label]
    wanted: dict[str, tuple[str, str, str]]
    new_ids: list[str]
    stale: list[str]


@dataclass
class SyncReport:
    """What an index update changed."""

    labels_added: int = 0
    labels_updated: int = 0
    labels_removed: int = 0
    labels_unchanged: int = 0
    vectors_added: int = 0
    chars_added: int = 0  # of the texts embedded (what their encoding cost)
    vectors_removed: int = 0
    vectors_total: int = 0
    changed_ids: list[str] = field(default_factory=list)
    examples_left_out: int = 0  # not pivots of a label over the example cap


def chroma_client(path: str | Path | None = None, host: str | None = None, port: int = 8000):
    """An embedded client on `path`, or an HTTP client when `host` is given."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if host:
        return chromadb.HttpClient(host=host, port=port, settings=settings)
    Path(path or "labelrank-data").mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path or "labelrank-data"), settings=settings)


def index_metadata(client, name: str = "labelrank") -> dict:
    """What the stored index says about itself (embedder, catalog hash, calibration), read
    without opening it; NotFoundError when there is none."""
    vectors, _ = generations.names(name, generations.current(client, name))
    return dict(client.get_collection(vectors).metadata or {})


def drop_index(client, name: str = "labelrank") -> None:
    """Delete every collection of an index (all its generations), so that the name can be
    built again from scratch, with another embedder if need be."""
    for collection in client.list_collections():
        if collection.name.startswith((f"{name}-vectors", f"{name}-labels")):
            client.delete_collection(collection.name)


def label_texts(label: Label) -> list[tuple[str, str]]:
    """The (kind, text) pairs that represent a label in the index, without repeats."""
    pairs = [("name", label.name)]
    pairs += [("alias", alias) for alias in label.aliases]
    if label.description:
        pairs.append(("description", label.description))
    pairs += [("example", text) for text in label.examples]
    seen: set[str] = set()
    unique = []
    for kind, text in pairs:
        key = text.casefold()
        if key not in seen:
            seen.add(key)
            unique.append((kind, text))
    return unique


def vector_id(label_id: str, kind: str, text: str) -> str:
    """Content-addressed id, so an unchanged text is never re-embedded."""
    digest = hashlib.sha1(f"{kind}\x1f{text}".encode()).hexdigest()[:16]
    return f"{label_id}\x1f{digest}"


def label_of(vid: str) -> str:
    """The label id inside a vector id (the inverse of `vector_id`)."""
    return vid[:vid.rindex("\x1f")]


class LabelIndex(Compaction):
    """Label vectors and label records in two Chroma collections, guarded by the embedder name."""

    def __init__(self, client, embedder: Embedder, name: str = "labelrank",
                 hnsw: dict | None = None, prototypes: bool | None = None,
                 compact_ratio: float = generations.COMPACT_RATIO,
                 compact_min: int = generations.COMPACT_MIN) -> None:
        self.embedder = embedder
        # When compaction is due (`compaction_due`): dead slots over this share of the live
        # ones and over this many.
        self.compact_ratio, self.compact_min = compact_ratio, compact_min
        self._client, self._name = client, name
        self._config = {"hnsw": {"space": "cosine", "sync_threshold": _SYNC_THRESHOLD,
                                 **(hnsw or {})}}
        self._generation = generations.current(client, name)
        self._vectors, self._records = self._open(self._generation)
        self._check_embedder(self._vectors.metadata or {})
        # A label's prototype is the normalised mean of its example vectors, one more vector of
        # kind "prototype" ("describe a class by the statistics of its examples"): on once an
        # index is built with it, until it is built without.
        stored_flag = bool((self._vectors.metadata or {}).get("prototypes"))
        self.prototypes = stored_flag if prototypes is None else prototypes
        self._journal = Journal(client, name)
        self._lock = threading.RLock()
        self._gate = Gate()  # reads pass it; a compaction's switch closes it
        self._dirty: set[str] | None = None  # labels written while a compaction copies
        self._labels: dict[str, Label] = {}
        self._hashes: dict[str, str] = {}
        self._head_table = HeadTable()
        self._head: tuple[HeadTable, str, LabelHead] | None = None  # cached by table and info
        self._reload()
        # Counting costs more than a query (measured 12 ms vs 4 ms at 56K vectors), and only
        # this object's writes change it (other workers' edits make the API reopen the index).
        self._count = self._vectors.count()
        # Graph slots written in this generation: live rows plus tombstones (see generations).
        self._slots = int((self._vectors.metadata or {}).get("slots")
                          or self._count + len(self._labels))
        if self.prototypes != stored_flag:
            self._set_meta(prototypes=self.prototypes)

    # -- reading -------------------------------------------------------------

    @property
    def labels(self) -> dict[str, Label]:
        """Label records by id (examples are not kept in memory)."""
        return self._labels

    def get(self, label_id: str) -> Label:
        """One label, or UnknownLabelError."""
        try:
            return self._labels[label_id]
        except KeyError:
            raise UnknownLabelError(f"unknown label id {label_id!r}", label_id=label_id) from None

    def examples(self, label_id: str) -> list[str]:
        """The example texts stored for a label."""
        self.get(label_id)
        with self._gate.reading():
            found = self._vectors.get(
                where={"$and": [{"label_id": label_id}, {"kind": "example"}]},
                include=["documents"])
        return sorted(found["documents"] or [])

    def children(self, label_id: str) -> list[str]:
        """Ids of the labels whose parent is `label_id`."""
        return [lid for lid, lab in self._labels.items() if lab.parent == label_id]

    def calibration(self) -> dict | None:
        """Retrieval settings chosen by `labelrank calibrate`, saved with the index."""
        raw = (self._vectors.metadata or {}).get("calibration")
        return json.loads(raw) if raw else None

    def save_calibration(self, values: dict) -> None:
        """Store calibrated retrieval settings beside the index."""
        with self._lock:
            self._set_meta(calibration=json.dumps(values, sort_keys=True))

    def head(self) -> LabelHead | None:
        """The learned head saved with the index (None: never trained, or for another
        embedder); rebuilt only after label writes."""
        raw = (self._vectors.metadata or {}).get("head")
        table = self._head_table
        if not raw:
            return None
        if self._head is None or self._head[0] is not table or self._head[1] != raw:
            info = HeadInfo.from_json(raw)
            if info.embedder != self.embedder.name or info.dim != self.embedder.dim:
                return None
            self._head = (table, raw, LabelHead(info, table))
        return self._head[2]

    def save_head(self, info: HeadInfo, rows: dict[str, HeadRow]) -> None:
        """Store each label's trained row in its label record, then the head's facts."""
        with self._lock:
            ids = [label_id for label_id in rows if label_id in self._labels]
            if self._dirty is not None:  # a compaction copying meanwhile copies them again
                self._dirty.update(ids)
            for chunk in chunks(ids, _WRITE_BATCH):
                self._records.update(ids=chunk, metadatas=[rows[lid].fields() for lid in chunk])
            self._head_table = self._head_table.trained({lid: rows[lid] for lid in ids})
            self._set_meta(head=info.to_json())

    def vector_count(self) -> int:
        """Number of vectors in the index."""
        return self._count

    def fingerprint(self) -> dict[str, object]:
        """What built this index: embedder, dimension, catalog hash and, with a head, when it
        was trained (a retrained head answers differently: caches and resumed batches see it)."""
        meta = self._vectors.metadata or {}
        head = self.head()
        return {"embedder": meta.get("embedder"), "dim": meta.get("dim"),
                "catalog_hash": meta.get("catalog_hash"), "labels": len(self._labels),
                **({"head_trained_at": head.info.trained_at} if head else {})}

    def search(self, vectors: np.ndarray, n: int, with_vectors: bool = False,
               with_texts: bool = True) -> list[list[Hit]]:
        """The `n` nearest label vectors of each query vector, best first. Without texts the
        hits carry only label id and similarity (Chroma then skips its row lookups, the larger
        part of a query's cost); embeddings come along when asked."""
        total = self._count
        if total == 0:
            raise EmptyIndexError("the index is empty: run `labelrank index CATALOG` first")
        n = min(n, total)
        include = ["distances"]
        include += ["metadatas", "documents"] if with_texts else []
        include += ["embeddings"] if with_vectors else []
        # Fetching texts makes Chroma look rows up in SQLite, one variable per row: keep
        # queries x neighbours under SQLite's limit (32,766).
        step = max(1, min(_QUERY_BATCH, _MAX_ROWS // n)) if with_texts else _QUERY_BATCH
        results = []
        for start in range(0, len(vectors), step):
            found = self._query(vectors[start:start + step], n, include)
            for row, (ids, dists) in enumerate(zip(found["ids"], found["distances"],
                                                   strict=True)):
                metas = found["metadatas"][row] if with_texts else None
                docs = found["documents"][row] if with_texts else None
                embs = found["embeddings"][row] if with_vectors else None
                hits: list[Hit] = []
                for i, (vid, dist) in enumerate(zip(ids, dists, strict=True)):
                    if metas is not None and metas[i] is None:
                        # Deleted by a concurrent label write after the graph search found it
                        # (seen under label churn): it no longer belongs to any label.
                        continue
                    hits.append(Hit(
                        metas[i]["label_id"] if metas else label_of(vid),
                        metas[i]["kind"] if metas else "", docs[i] if docs else "",
                        1.0 - float(dist), len(hits) + 1,
                        None if embs is None else np.asarray(embs[i], dtype=np.float32), vid))
                results.append(hits)
        return results

    def iter_vectors(self, kind: str | None = None) -> Iterator[StoredVector]:
        """Every stored label vector (of one kind, if given) with its label, kind and text
        (a full scan, page by page)."""
        for vid, meta, doc, vector in _pages(self._vectors,
                                              ["metadatas", "documents", "embeddings"],
                                              {"kind": kind} if kind else None):
            yield StoredVector(vid, meta["label_id"], meta["kind"], doc,
                               np.asarray(vector, dtype=np.float32))

    def nearest_ids(self, vectors: np.ndarray, n: int) -> tuple[list[list[str]], list[list[float]]]:
        """Chroma's raw answer: the ids and cosine distances of each query's `n` nearest
        vectors, best first, with no hit objects built (the cheapest query there is)."""
        if self._count == 0:
            raise EmptyIndexError("the index is empty: run `labelrank index CATALOG` first")
        ids: list[list[str]] = []
        distances: list[list[float]] = []
        for start in range(0, len(vectors), _QUERY_BATCH):
            found = self._query(vectors[start:start + _QUERY_BATCH], min(n, self._count),
                                ["distances"])
            ids += found["ids"]
            distances += found["distances"]
        return ids, distances

    def _query(self, vectors: np.ndarray, n: int, include: list[str]) -> Any:
        """One Chroma query, asked again when it raced a label write (see _RACED_WRITE)."""
        from chromadb.errors import InternalError  # chromadb loads with the client, not here

        for attempt in range(1, _QUERY_ATTEMPTS + 1):
            try:
                with self._gate.reading():
                    return self._vectors.query(query_embeddings=vectors, n_results=n,
                                               include=include)
            except InternalError as error:
                if not any(m in str(error) for m in _RACED_WRITE) or attempt == _QUERY_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these vector ids (ids no longer stored are left out). Reading
        the distinct ids of a batch's hits once costs a fraction of a query returning a vector
        per hit (sub-queries: 0.5 s against 2.6 s for 200 queries x 50 neighbours)."""
        vectors: dict[str, np.ndarray] = {}
        for chunk in chunks(list(dict.fromkeys(ids)), _MAX_ROWS):
            with self._gate.reading():
                found = self._vectors.get(ids=chunk, include=["embeddings"])
            for vid, vector in zip(found["ids"], found["embeddings"], strict=True):
                vectors[vid] = np.asarray(vector, dtype=np.float32)
        return vectors

    # -- writing -------------------------------------------------------------

    def sync(self, catalog: Catalog, progress: ProgressCallback | None = None,
             prune: bool = True) -> SyncReport:
        """Make the index hold exactly `catalog` (or only add, without pruning), by content hash."""
        with self._lock:
            report = SyncReport()
            # A full sync trusts only Chroma; a partial one (API edits) the copy in memory.
            stored = self._stored_hashes() if prune else dict(self._hashes)
            changed = [lab for lab in catalog.labels.values()
                       if stored.get(lab.id) != self._hash(lab)]
            report.labels_unchanged = len(catalog) - len(changed)
            report.changed_ids = [lab.id for lab in changed]
            removed = sorted(set(stored) - set(catalog.labels)) if prune else []
            self._write_labels(changed, set(stored), report, progress)
            if removed:
                report.vectors_removed += self._remove(removed)
                report.labels_removed = len(removed)
            for lab in changed:
                if lab.id in stored:
                    report.labels_updated += 1
                else:
                    report.labels_added += 1
            if prune:
                self._reload()
            else:
                self._remember(changed, removed=[])
            self._set_meta(catalog_hash=self._catalog_hash())
            report.vectors_total = self._count = self._vectors.count()
            return report

    def upsert(self, label: Label) -> SyncReport:
        """Create or replace one label with its texts."""
        if label.parent is not None and label.parent not in self._labels:
            raise UnknownLabelError(f"parent {label.parent!r} is not in the index",
                                    label_id=label.parent, field="parent")
        return self.sync(Catalog({label.id: label}), prune=False)

    def add_examples(self, label_id: str, texts: Sequence[str]) -> SyncReport:
        """Add example texts to a label (existing ones are kept, repeats ignored)."""
        with self._lock:
            label = self.get(label_id)
            new = (t.strip() for t in texts if t.strip())
            merged = dict.fromkeys([*self.examples(label_id), *new])
            return self.upsert(replace(label, examples=tuple(merged)))

    def remove_examples(self, label_id: str, texts: Sequence[str]) -> SyncReport:
        """Remove example texts from a label; texts it does not have are ignored."""
        with self._lock:
            label = self.get(label_id)
            drop = {t.strip() for t in texts}
            kept = [t for t in self.examples(label_id) if t not in drop]
            return self.upsert(replace(label, examples=tuple(kept)))

    def delete(self, label_ids: Sequence[str]) -> int:
        """Remove labels and all their vectors; returns the number of vectors removed."""
        for label_id in label_ids:
            self.get(label_id)
        with self._lock:
            removed = self._remove(list(label_ids))
            self._remember([], removed=list(label_ids))
            self._set_meta(catalog_hash=self._catalog_hash())
            self._count = self._vectors.count()
            return removed

    def recover(self, shared: bool = False) -> int:
        """Finish the label writes a crash interrupted, each as it was meant to end; returns
        how many. Run it where no other process writes the index (the directory's lock holder);
        `shared` (a Chroma server) finishes only writes too old to be in flight elsewhere."""
        with self._lock:
            pending = self._journal.pending(STALE_S if shared else 0.0)
            for write in pending:
                if write.deleted:
                    self._remove(list(write.deleted))
                if write.labels:
                    labels = list(write.labels)
                    # Every label counts as stored: a half-written new one has vectors too.
                    plan = self._plan(labels, {label.id for label in labels})
                    self._store(plan, *self._embed_plan(plan), SyncReport())
                self._journal.end(write.key)
            if not shared:  # what a crashed compaction left
                self._drop(generations.leftovers(self._client, self._name, self._generation))
            self._reload()
            if (self._vectors.metadata or {}).get("catalog_hash") != self._catalog_hash():
                self._set_meta(catalog_hash=self._catalog_hash())
            self._count = self._vectors.count()
            return len(pending)

    # -- internals -----------------------------------------------------------

    def _open(self, generation: int) -> tuple[Any, Any]:
        meta = {"embedder": self.embedder.name, "dim": self.embedder.dim,
                "schema": SCHEMA_VERSION}
        vectors, records = generations.names(self._name, generation)
        opened = tuple(self._client.get_or_create_collection(
            collection, metadata=meta, configuration=self._config, embedding_function=None)
            for collection in (vectors, records))
        _persist_every_write(opened[0], self.embedder.dim)
        return opened

    def _check_embedder(self, meta: dict) -> None:
        if meta.get("embedder") != self.embedder.name or meta.get("dim") != self.embedder.dim:
            raise IndexMismatchError(
                f"this index was built with embedder {meta.get('embedder')!r} "
                f"(dim {meta.get('dim')}), but the configured embedder is "
                f"{self.embedder.name!r} (dim {self.embedder.dim}); rebuild the index into a new "
                "directory or configure the original embedder",
                index_embedder=meta.get("embedder"), configured_embedder=self.embedder.name,
            )

    def _write_labels(self, labels: list[Label], stored: set[str], report: SyncReport,
                      progress: ProgressCallback | None) -> None:
        # Embedding chunk k+1 overlaps writing chunk k: the embedder releases the GIL (or runs
        # in another process, see ProcessEmbedder), while Chroma's add holds it.
        plans = (self._plan(chunk, stored) for chunk in chunks(labels, _LABEL_CHUNK))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-ahead") as ahead:
            current = next(plans, None)
            pending = ahead.submit(self._embed_plan, current) if current else None
            while current is not None and pending is not None:  # both or neither
                vectors, names = pending.result()
                following = next(plans, None)
                pending = ahead.submit(self._embed_plan, following) if following else None
                self._store(current, vectors, names, report)
                if progress:
                    progress(len(current.labels))
                current = following

    def _plan(self, labels: Sequence[Label], stored: set[str]) -> _ChunkPlan:
        """Which vectors of these labels are new (to embed) and which are stale (to delete)."""
        wanted = {vector_id(lab.id, kind, text): (lab.id, kind, text)
                  for lab in labels for kind, text in label_texts(lab)}
        if self.prototypes:
            wanted.update(entry for lab in labels if (entry := _prototype_entry(lab)))
        existing = set(self._vector_ids_of([lab.id for lab in labels if lab.id in stored]))
        new_ids = [vid for vid in wanted if vid not in existing]
        return _ChunkPlan(list(labels), wanted, new_ids, sorted(existing - set(wanted)))

    def _embed_plan(self, plan: _ChunkPlan) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for the plan's new texts, and each label's name vector (reused when new)."""
        row_of = {vid: row for row, vid in enumerate(plan.new_ids)}
        name_rows = [row_of.get(vector_id(lab.id, "name", lab.name)) for lab in plan.labels]
        missing = [lab.name for lab, row in zip(plan.labels, name_rows, strict=True)
                   if row is None]
        texts = [plan.wanted[vid][2] for vid in plan.new_ids
                 if plan.wanted[vid][1] != PROTOTYPE]
        vectors = self.embedder.embed(texts + missing)
        extra = iter(range(len(texts), len(vectors)))
        names = vectors[[next(extra) if row is None else row for row in name_rows]]
        return self._with_prototypes(plan, vectors[:len(texts)]), names

    def _with_prototypes(self, plan: _ChunkPlan, embedded: np.ndarray) -> np.ndarray:
        """The plan's new vectors in `new_ids` order: embedded texts, and for each new
        prototype the normalised mean of its label's example vectors (new or stored)."""
        prototypes = [vid for vid in plan.new_ids if plan.wanted[vid][1] == PROTOTYPE]
        if not prototypes:
            return embedded
        texts = [vid for vid in plan.new_ids if plan.wanted[vid][1] != PROTOTYPE]
        known = dict(zip(texts, embedded, strict=True))
        examples = {vid: label for vid, (label, kind, _) in plan.wanted.items()
                    if kind == "example"}
        known.update(self.embeddings([vid for vid in examples if vid not in known]))
        by_label: dict[str, list[np.ndarray]] = {}
        for vid, label in examples.items():
            by_label.setdefault(label, []).append(known[vid])
        for vid in prototypes:
            mean = np.mean(by_label[plan.wanted[vid][0]], axis=0)
            known[vid] = (mean / np.linalg.norm(mean)).astype(np.float32)
        return np.stack([known[vid] for vid in plan.new_ids]) if plan.new_ids else embedded

    def _store(self, plan: _ChunkPlan, vectors: np.ndarray, names: np.ndarray,
               report: SyncReport) -> None:
        # Vectors first, the label record (with its hash) last, all between the journal's
        # marks: a crash between them is finished by `recover`, so no label stays half new.
        key = self._journal.begin(labels=tuple(plan.labels))
        self._slots += len(plan.new_ids) + len(plan.labels)
        if self._dirty is not None:
            self._dirty.update(label.id for label in plan.labels)
        for start in range(0, len(plan.new_ids), _WRITE_BATCH):
            ids = plan.new_ids[start:start + _WRITE_BATCH]
            self._vectors.upsert(
                ids=ids, embeddings=vectors[start:start + _WRITE_BATCH],
                documents=[plan.wanted[vid][2] for vid in ids],
                metadatas=[{"label_id": plan.wanted[vid][0], "kind": plan.wanted[vid][1]}
                           for vid in ids],
            )
        if plan.stale:
            self._vectors.delete(ids=plan.stale)
        report.vectors_added += len(plan.new_ids)
        report.chars_added += sum(len(plan.wanted[vid][2]) for vid in plan.new_ids)
        report.vectors_removed += len(plan.stale)
        self._records.upsert(
            ids=[lab.id for lab in plan.labels], embeddings=names,
            documents=[_label_json(lab) for lab in plan.labels],
            metadatas=[{"hash": self._hash(lab), "parent": lab.parent or "",
                        "examples": len(lab.examples), EXAMPLES: _examples_digest(lab)}
                       for lab in plan.labels],
        )
        self._journal.end(key)

    def _remove(self, label_ids: list[str]) -> int:
        """Delete labels' vectors and records between the journal's marks; returns the
        number of vectors removed."""
        key = self._journal.begin(deleted=tuple(label_ids))
        if self._dirty is not None:
            self._dirty.update(label_ids)
        removed = self._delete_vectors_of(label_ids)
        self._records.delete(ids=label_ids)
        self._journal.end(key)
        return removed

    def _vector_ids_of(self, label_ids: list[str]) -> list[str]:
        if not label_ids:
            return []
        return self._vectors.get(where={"label_id": {"$in": label_ids}}, include=[])["ids"]

    def _delete_vectors_of(self, label_ids: list[str]) -> int:
        removed = 0
        for chunk in chunks(label_ids, 512):
            ids = self._vector_ids_of(chunk)
            if ids:
                self._vectors.delete(ids=ids)
            removed += len(ids)
        return removed

    def _stored_hashes(self) -> dict[str, str]:
        return {rid: meta["hash"] for rid, meta, _, _ in _pages(self._records, ["metadatas"])}

    def _reload(self) -> None:
        """Read every label record from Chroma (on open and after a full sync)."""
        labels, hashes, metas = {}, {}, []
        for rid, meta, doc, _ in _pages(self._records, ["metadatas", "documents"]):
            labels[rid], hashes[rid] = _label_from_json(doc), meta["hash"]
            metas.append((rid, meta))
        self._labels, self._hashes = labels, hashes
        self._head_table = HeadTable.read(metas)

    def _remember(self, written: Sequence[Label], removed: Sequence[str]) -> None:
        # New dicts, not in-place edits: readers holding the old ones see a consistent catalog,
        # and identity tells caches (the lexicon) that labels changed.
        labels, hashes = dict(self._labels), dict(self._hashes)
        for label in written:
            labels[label.id] = replace(label, examples=())
            hashes[label.id] = self._hash(label)
        for label_id in removed:
            labels.pop(label_id, None)
            hashes.pop(label_id, None)
        self._labels, self._hashes = labels, hashes
        self._head_table = self._head_table.updated(
            ((lab.id, _examples_digest(lab), len(lab.examples)) for lab in written), removed)

    def _hash(self, label: Label) -> str:
        """What a label's stored hash must be: its content, and whether it has a prototype."""
        return label.content_hash() + ("+prototype" if self.prototypes else "")

    def _catalog_hash(self) -> str:
        digest = hashlib.sha256()
        for rid, hash_ in sorted(self._hashes.items()):
            digest.update(f"{rid}\x1f{hash_}".encode())
        return digest.hexdigest()[:16]

    def _set_meta(self, **updates: object) -> None:
        meta = {**(self._vectors.metadata or {}), "slots": self._slots, **updates}
        self._vectors.modify(metadata=meta)


def _persist_every_write(collection, dim: int) -> None:
    """Set the sync threshold on a collection built before it was set, and have Chroma
    persist the graph now (a query loads it), so that copies of the directory hold it too."""
    hnsw = (collection.configuration or {}).get("hnsw") or {}
    if hnsw.get("sync_threshold", _SYNC_THRESHOLD) == _SYNC_THRESHOLD:
        return
    collection.modify(configuration={"hnsw": {"sync_threshold": _SYNC_THRESHOLD}})
    if collection.count():
        collection.query(query_embeddings=[[1.0] + [0.0] * (dim - 1)], n_results=1,
                         include=[])


def _pages(collection, include: list[str],
           where: dict | None = None) -> Iterator[tuple[str, dict, str, object]]:
    """Every row of a Chroma collection (matching `where`) as (id, metadata, document,
    embedding), page by page."""
    offset = 0
    while True:
        page = collection.get(include=include, limit=_PAGE, offset=offset, where=where)
        count = len(page["ids"])
        metas = page.get("metadatas") or [None] * count
        docs = page.get("documents") or [None] * count
        embeddings = page.get("embeddings")
        vectors = [None] * count if embeddings is None else embeddings
        yield from zip(page["ids"], metas, docs, vectors, strict=True)
        if count < _PAGE:
            return
        offset += _PAGE


def _prototype_entry(label: Label) -> tuple[str, tuple[str, str, str]] | None:
    """The id and row of a label's prototype (None without examples): named after its example
    texts, so a change of examples writes a new prototype and retires the old one."""
    texts = sorted(text for kind, text in label_texts(label) if kind == "example")
    if not texts:
        return None
    digest = hashlib.sha1("\x1f".join(texts).encode()).hexdigest()[:16]
    return (f"{label.id}\x1f{PROTOTYPE}-{digest}",
            (label.id, PROTOTYPE, f"mean of {len(texts)} examples"))


def _examples_digest(label: Label) -> str:
    """The digest of the example texts stored for a label (as the head records them)."""
    return examples_digest(text for kind, text in label_texts(label) if kind == "example")


def _label_json(label: Label) -> str:
    return json.dumps({"id": label.id, "name": label.name, "description": label.description,
                       "aliases": list(label.aliases), "parent": label.parent,
                       "assignable": label.assignable}, ensure_ascii=False)


def _label_from_json(doc: str) -> Label:
    data = json.loads(doc)
    return Label(id=data["id"], name=data["name"], description=data.get("description", ""),
                 aliases=tuple(data.get("aliases", ())), parent=data.get("parent"),
                 assignable=data.get("assignable", True))
