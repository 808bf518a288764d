"""An embedder that runs in a child process, so big index builds embed while Chroma writes.

Chroma's add holds the GIL for its whole call, which stalls an embedder thread in the same
process; in a child process the two really run side by side.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from retrieval.embedder import Embedder

_worker: Embedder | None = None


class ProcessEmbedder:
    """Embeds in one spawned worker built by `factory` (a picklable callable)."""

    def __init__(self, factory: Callable[[], Embedder]) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_load, initargs=(factory,))
        self.name, self.dim, self.backend = self._pool.submit(_describe).result()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed in the worker; blocks the calling thread only (the GIL is free meanwhile)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._pool.submit(_embed, list(texts)).result()

    def close(self) -> None:
        """Stop the worker process."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ProcessEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load(factory: Callable[[], Embedder]) -> None:
    global _worker
    _worker = factory()


def _describe() -> tuple[str, int, str]:
    assert _worker is not None
    return _worker.name, _worker.dim, _worker.backend


def _embed(texts: list[str]) -> np.ndarray:
    assert _worker is not None
    return _worker.embed(texts)
