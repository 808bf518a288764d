"""Texts in, candidate shortlists out: embed, search the index, fuse ranks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from retrieval.catalog import Label
from retrieval.fusion import Aggregation, Candidate, aggregate
from retrieval.index import LabelIndex
from retrieval.lexical import Lexicon, boost
from retrieval.segments import SubqueryConfig, fuse_parts, segments


class Retriever:
    """Shortlists assignable labels for a batch of texts."""

    def __init__(self, index: LabelIndex, aggregation: Aggregation, neighbours: int = 100,
                 subqueries: SubqueryConfig | None = None, lexical_weight: float = 0.0) -> None:
        self.index = index
        self.aggregation = aggregation
        self.neighbours = neighbours
        self.subqueries = subqueries
        self.lexical_weight = lexical_weight
        self._lexicon: Lexicon | None = None
        self._assignable: tuple[Mapping[str, Label], frozenset[str]] | None = None

    def describe(self) -> str:
        """The retrieval method in a few words, for run files and caches."""
        method = self.aggregation.describe()
        if self.subqueries:
            sub = self.subqueries
            method = (f"subqueries(n<={sub.max_ngram},w={sub.weight:g},"
                      f"words<={sub.max_words},nn={sub.neighbours})")
        return f"{method}+lexical({self.lexical_weight:g})" if self.lexical_weight else method

    def candidates(self, texts: Sequence[str], top_k: int) -> list[list[Candidate]]:
        """The `top_k` candidates of each text, best first."""
        if not texts:
            return []
        vectors = self.index.embedder.embed(texts)
        hits = self.index.search(vectors, max(self.neighbours, top_k),
                                 with_vectors=self.subqueries is not None)
        assignable = self.assignable()
        if self.subqueries is None:
            shortlists = [aggregate(h, self.aggregation, top_k, assignable) for h in hits]
        else:
            shortlists = self._with_parts(texts, vectors, hits, top_k, assignable)
        if self.lexical_weight:
            lexicon = self._current_lexicon()
            shortlists = [boost(s, lexicon.matches(t), self.lexical_weight, top_k)
                          for s, t in zip(shortlists, texts, strict=True)]
        return shortlists

    def assignable(self) -> frozenset[str]:
        """Ids of the labels that may be answers (not taxonomy group nodes)."""
        labels = self.index.labels
        # The index swaps in a new labels dict on every change, so identity tells staleness.
        if self._assignable is None or self._assignable[0] is not labels:
            ids = frozenset(lid for lid, lab in labels.items() if lab.assignable)
            self._assignable = (labels, ids)
        return self._assignable[1]

    def _current_lexicon(self) -> Lexicon:
        if self._lexicon is None or self._lexicon.source is not self.index.labels:
            self._lexicon = Lexicon(self.index.labels)
        return self._lexicon

    def _with_parts(self, texts: Sequence[str], vectors: np.ndarray, hits: list, top_k: int,
                    assignable: frozenset[str]) -> list[list[Candidate]]:
        config = self.subqueries
        assert config is not None
        parts = [segments(text, config) for text in texts]
        flat = [part for text_parts in parts for part in text_parts]
        part_vectors = self.index.embedder.embed(flat)
        part_hits = (self.index.search(part_vectors, config.neighbours, with_vectors=True)
                     if flat else [])
        results, start = [], 0
        for position, (whole, text_parts) in enumerate(zip(hits, parts, strict=True)):
            end = start + len(text_parts)
            results.append(fuse_parts(whole, part_hits[start:end], vectors[position],
                                      part_vectors[start:end], config.weight, top_k, assignable))
            start = end
        return results
