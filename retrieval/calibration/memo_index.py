"""An index view that embeds, searches and reads each thing once and remembers what it cost."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.calibration.work import COSTS, WorkMeter


class MemoIndex:
    """Calibration ranks one set of texts under many settings, and sub-query variants share
    most of their parts. Through this view each text is embedded, each query vector searched
    and each stored vector read once; a repeat is answered from memory and `charged` the
    seconds the first one took, so every setting still pays what serving it would cost.

    `base` is a LabelIndex (or a view of one); this has what the retriever and stages read
    (labels, embedder, nearest_ids, embeddings, head). Searches that need hit texts go to the base.
    The work done the first time is counted on `meter`.
    """

    def __init__(self, base: Any, meter: WorkMeter | None = None) -> None:
        self.base = base
        self.meter = meter if meter is not None else WorkMeter()
        self.embedder = _MemoEmbedder(base.embedder, self)
        self.charged = 0.0  # seconds of remembered work handed out again
        self.encoded = 0  # texts the encoder ran on (each once)
        self._head: tuple[Any] | None = None
        self._rows: dict[bytes, tuple[int, list[str], list[float], float]] = {}
        self._stored: dict[str, tuple[np.ndarray, float]] = {}

    @property
    def labels(self) -> Any:
        """The base's labels."""
        return self.base.labels

    def head(self) -> Any:
        """The base's learned head, if it has one (a view trains its own on first use)."""
        if self._head is None:
            started = time.perf_counter()
            head = self.base.head()
            trained = head is not None and getattr(self.base, "trains_head", False)
            work = (head.info.examples * head.info.epochs * COSTS["head_example_epoch"]
                    if trained else 0.0)
            self.meter.charge("head", work, time.perf_counter() - started)
            self._head = (head,)
        return self._head[0]

    def search(self, *args: Any, **kwargs: Any) -> Any:
        """The base's search (with texts or vectors per hit: not remembered)."""
        return self.base.search(*args, **kwargs)

    def nearest_ids(self, vectors: np.ndarray,
                    n: int) -> tuple[list[list[str]], list[list[float]]]:
        """The base's ids-only search, each query vector searched once at the deepest `n`."""
        keys = [np.ascontiguousarray(v).tobytes() for v in vectors]
        missing = [i for i, key in enumerate(keys)
                   if key not in self._rows or self._rows[key][0] < n]
        if missing:
            started = time.perf_counter()
            ids, distances = self.base.nearest_ids(vectors[missing], n)
            took = time.perf_counter() - started
            self.meter.queried(len(missing), n, took)
            each = took / len(missing)
            for i, row_ids, row_distances in zip(missing, ids, distances, strict=True):
                self._rows[keys[i]] = (n, row_ids, row_distances, each)
        fresh = set(missing)
        out_ids, out_distances = [], []
        for i, key in enumerate(keys):
            _, row_ids, row_distances, cost = self._rows[key]
            if i not in fresh:
                self.charged += cost
            out_ids.append(row_ids[:n])
            out_distances.append(row_distances[:n])
        return out_ids, out_distances

    def embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The base's stored vectors, each read once."""
        missing = [vid for vid in dict.fromkeys(ids) if vid not in self._stored]
        if missing:
            started = time.perf_counter()
            found = self.base.embeddings(missing)
            took = time.perf_counter() - started
            self.meter.charge("read", len(missing) * COSTS["read_vector"], took)
            each = took / len(missing)
            self._stored.update((vid, (vector, each)) for vid, vector in found.items())
        fresh = set(missing)
        out = {}
        for vid in ids:
            if vid in self._stored:
                out[vid] = self._stored[vid][0]
                if vid not in fresh:
                    self.charged += self._stored[vid][1]
        return out


class _MemoEmbedder:
    """The base embedder, each text embedded once; repeats charged what the first cost."""

    def __init__(self, base: Any, owner: MemoIndex) -> None:
        self.base = base
        self.owner = owner
        self.name, self.dim, self.backend = base.name, base.dim, base.backend
        self._vectors: dict[str, tuple[np.ndarray, float]] = {}
        self._tokens: dict[str, tuple[np.ndarray, float]] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of `texts`, embedding only the ones not seen before."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            started = time.perf_counter()
            vectors = self.base.embed(missing)
            took = time.perf_counter() - started
            self.owner.encoded += len(missing)
            self.owner.meter.encoded(missing, took)
            each = took / len(missing)
            self._vectors.update((t, (v, each)) for t, v in zip(missing, vectors, strict=True))
        fresh = set(missing)
        self.owner.charged += sum(self._vectors[t][1] for t in texts if t not in fresh)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vectors[t][0] for t in texts])

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """`embed` and each text's token vectors (token matching), each text encoded once."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._tokens))
        if missing:
            started = time.perf_counter()
            vectors, tokens = self.base.embed_with_tokens(missing)
            took = time.perf_counter() - started
            self.owner.encoded += len(missing)
            self.owner.meter.encoded(missing, took)
            each = took / len(missing)
            for text, vector, own in zip(missing, vectors, tokens, strict=True):
                self._tokens[text] = (own, each)
                self._vectors.setdefault(text, (vector, each))
        fresh = set(missing)
        self.owner.charged += sum(self._tokens[t][1] for t in texts if t not in fresh)
        pooled = (np.stack([self._vectors[t][0] for t in texts]) if texts
                  else np.zeros((0, self.dim), dtype=np.float32))
        return pooled, [self._tokens[t][0] for t in texts]
