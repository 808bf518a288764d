"""Representative examples (pivots): fewer vectors per label for about the same recall."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from retrieval.catalog import Catalog
from retrieval.embedder import Embedder

_EMBED_CHUNK = 4096


def choose_pivots(vectors: np.ndarray, k: int) -> list[int]:
    """Rows of `k` real examples that cover the cloud: k-means, then the example nearest to
    each centroid (a medoid stand-in that keeps real text, never an average)."""
    if len(vectors) <= k:
        return list(range(len(vectors)))
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=k, n_init=1, random_state=0).fit(vectors)
    chosen: list[int] = []
    for centroid in model.cluster_centers_:
        order = np.argsort(-(vectors @ centroid))
        chosen.append(int(next(i for i in order if i not in chosen)))
    return sorted(chosen)


def pivot_catalog(catalog: Catalog, embedder: Embedder, cap: int,
                  progress: Callable[[int], None] | None = None) -> tuple[Catalog, int]:
    """The catalog with each label's examples cut to at most `cap` pivots; returns it and the
    number of examples dropped."""
    over = [label for label in catalog.labels.values() if len(label.examples) > cap]
    texts = [text for label in over for text in label.examples]
    vectors = np.vstack([embedder.embed(texts[i:i + _EMBED_CHUNK])
                         for i in range(0, len(texts), _EMBED_CHUNK)] or
                        [np.zeros((0, embedder.dim), dtype=np.float32)])
    labels = dict(catalog.labels)
    start = dropped = 0
    for label in over:
        rows = vectors[start:start + len(label.examples)]
        start += len(label.examples)
        keep = choose_pivots(rows, cap)
        labels[label.id] = replace(label, examples=tuple(label.examples[i] for i in keep))
        dropped += len(label.examples) - len(keep)
        if progress:
            progress(1)
    return Catalog(labels), dropped
