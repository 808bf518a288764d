"""Texts in, candidate shortlists out: embed, search the index, fuse ranks."""

from __future__ import annotations

from collections.abc import Sequence

from retrieval.fusion import Aggregation, Candidate, aggregate
from retrieval.index import LabelIndex
from retrieval.segments import SubqueryConfig, fuse_parts, segments


class Retriever:
    """Shortlists assignable labels for a batch of texts."""

    def __init__(self, index: LabelIndex, aggregation: Aggregation, neighbours: int = 100,
                 subqueries: SubqueryConfig | None = None) -> None:
        self.index = index
        self.aggregation = aggregation
        self.neighbours = neighbours
        self.subqueries = subqueries

    def describe(self) -> str:
        """The retrieval method in a few words, for run files and caches."""
        if self.subqueries:
            sub = self.subqueries
            return (f"subqueries(n<={sub.max_ngram},w={sub.weight:g},"
                    f"words<={sub.max_words},nn={sub.neighbours})")
        return self.aggregation.describe()

    def candidates(self, texts: Sequence[str], top_k: int) -> list[list[Candidate]]:
        """The `top_k` candidates of each text, best first."""
        if not texts:
            return []
        hits = self.index.search(self.index.embedder.embed(texts), max(self.neighbours, top_k))
        assignable = {lid for lid, lab in self.index.labels.items() if lab.assignable}
        if self.subqueries is None:
            return [aggregate(h, self.aggregation, top_k, assignable) for h in hits]
        return self._with_parts(texts, hits, top_k, assignable)

    def _with_parts(self, texts: Sequence[str], hits: list, top_k: int,
                    assignable: set[str]) -> list[list[Candidate]]:
        config = self.subqueries
        assert config is not None
        parts = [segments(text, config) for text in texts]
        flat = [part for text_parts in parts for part in text_parts]
        part_hits = (self.index.search(self.index.embedder.embed(flat), config.neighbours)
                     if flat else [])
        results, start = [], 0
        for whole, text_parts in zip(hits, parts, strict=True):
            own = part_hits[start:start + len(text_parts)]
            start += len(text_parts)
            results.append(fuse_parts(whole, own, config.weight, top_k, assignable))
        return results
