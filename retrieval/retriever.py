"""Texts in, candidate shortlists out: embed, search the index, fuse ranks."""

from __future__ import annotations

from collections.abc import Sequence

from retrieval.fusion import Aggregation, Candidate, aggregate
from retrieval.index import LabelIndex


class Retriever:
    """Shortlists assignable labels for a batch of texts."""

    def __init__(self, index: LabelIndex, aggregation: Aggregation, neighbours: int = 100):
        self.index = index
        self.aggregation = aggregation
        self.neighbours = neighbours

    def candidates(self, texts: Sequence[str], top_k: int,
                   aggregation: Aggregation | None = None) -> list[list[Candidate]]:
        """The `top_k` candidates of each text, best first."""
        if not texts:
            return []
        vectors = self.index.embedder.embed(texts)
        hits = self.index.search(vectors, max(self.neighbours, top_k))
        assignable = {lid for lid, lab in self.index.labels.items() if lab.assignable}
        how = aggregation or self.aggregation
        return [aggregate(h, how, top_k, assignable) for h in hits]
