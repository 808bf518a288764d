"""An embedder that answers from an index's stored vectors: the final index of `fit` is built
from the vectors its winning candidate already embedded, instead of embedding every text again."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrieval.index import PROTOTYPE, LabelIndex


class StoredEmbedder:
    """The index's embedder, with each text it already stored looked up instead of embedded."""

    def __init__(self, index: LabelIndex) -> None:
        self.base = index.embedder
        self.name, self.dim, self.backend = self.base.name, self.base.dim, self.base.backend
        # A prototype is a mean of example vectors, not the embedding of its text.
        self.stored = {v.text: v.vector for v in index.iter_vectors() if v.kind != PROTOTYPE}
        self.embedded = 0  # texts that were not stored and had to be embedded

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of the texts, as the index's embedder gives them."""
        missing = sorted({t for t in texts if t not in self.stored})
        if missing:
            self.stored.update(zip(missing, self.base.embed(missing), strict=True))
            self.embedded += len(missing)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.stored[t] for t in texts]).astype(np.float32)
