"""The index as if some label texts had never been indexed: leave-out for self-calibration."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from retrieval.catalog import Label
from retrieval.head import LabelHead
from retrieval.index import Hit, LabelIndex, vector_id

HeldOutText = tuple[str, str, str]  # (label id, kind, text) as `label_texts` gives them


class HeldOutIndex:
    """A read-only view of a LabelIndex for calibration on pseudo-queries: the held-out texts'
    vectors never come back from a search, and held-out names and aliases name nothing to the
    lexical channel, so a pseudo-query cannot find its label through its own text; labels
    taken out of scope are no answer at all.

    It has what the retriever and the stages read (labels, embedder, search, nearest_ids,
    embeddings, head).
    """

    trains_head = True  # `head()` is trained here, on first use (calibration counts its work)

    def __init__(self, index: LabelIndex, held_out: Iterable[HeldOutText],
                 per_query: int = 3, out_of_scope: Iterable[str] = (),
                 train_head: Callable[[frozenset[str]], LabelHead | None] | None = None
                 ) -> None:
        self.base = index
        # The index's head learned the held-out texts: calibration gets one trained without
        # them (`train_head(hidden vector ids)`), on first use.
        self._train_head = train_head
        self._head: tuple[LabelHead | None] | None = None
        self.embedder = index.embedder
        held = list(held_out)
        self.hidden = frozenset(vector_id(*text) for text in held)
        # A pseudo-query finds its own held-out vectors first (up to `per_query` of them), and
        # now and then another query's: fetch twice that many more, then drop them.
        self.extra = min(len(self.hidden), 2 * per_query)
        labels = _without(index.labels, held)
        # A label taken out whole is no answer: no stage ranks or names an unassignable label.
        for label_id in out_of_scope:
            if label_id in labels:
                labels[label_id] = replace(labels[label_id], assignable=False)
        self.labels = labels

    def search(self, vectors: np.ndarray, n: int, with_vectors: bool = False,
               with_texts: bool = True) -> list[list[Hit]]:
        """LabelIndex.search without the held-out vectors (ranks renumbered)."""
        found = self.base.search(vectors, n + self.extra, with_vectors, with_texts)
        rows = []
        for hits in found:
            kept = [h for h in hits if h.vector_id not in self.hidden][:n]
            if len(kept) < len(hits) and any(h.rank != i for i, h in enumerate(kept, 1)):
                kept = [replace(h, rank=i) for i, h in enumerate(kept, 1)]
            rows.append(kept)
        return rows

    def nearest_ids(self, vectors: np.ndarray,
                    n: int) -> tuple[list[list[str]], list[list[float]]]:
        """LabelIndex.nearest_ids without the held-out vectors."""
        ids, distances = self.base.nearest_ids(vectors, n + self.extra)
        kept_ids, kept_distances = [], []
        for row_ids, row_distances in zip(ids, distances, strict=True):
            pairs = [(v, d) for v, d in zip(row_ids, row_distances, strict=True)
                     if v not in self.hidden][:n]
            kept_ids.append([v for v, _ in pairs])
            kept_distances.append([d for _, d in pairs])
        return kept_ids, kept_distances

    def head(self) -> LabelHead | None:
        """A head trained without the held-out texts (None: the index has none)."""
        if self._head is None:
            trained = (self._train_head(self.hidden)
                       if self._train_head and self.base.head() is not None else None)
            self._head = (trained,)
        return self._head[0]

    def embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The base's stored vectors (held-out ones are never asked for: no search finds them)."""
        return self.base.embeddings(ids)


def _without(labels: Mapping[str, Label], held: list[HeldOutText]) -> dict[str, Label]:
    """Labels whose held-out name and aliases are gone (an empty name names nothing)."""
    gone: dict[str, set[tuple[str, str]]] = {}
    for label_id, kind, text in held:
        gone.setdefault(label_id, set()).add((kind, text))
    out = dict(labels)
    for label_id, texts in gone.items():
        label = labels.get(label_id)
        if label is None:
            continue
        out[label_id] = replace(
            label, name="" if ("name", label.name) in texts else label.name,
            aliases=tuple(a for a in label.aliases if ("alias", a) not in texts))
    return out
