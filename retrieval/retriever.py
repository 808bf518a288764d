"""Texts in, candidate shortlists out: embed, search the index, fuse ranks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from retrieval.branches import BranchConfig, within_branches
from retrieval.catalog import Label
from retrieval.fusion import Aggregation, Candidate, aggregate
from retrieval.index import LabelIndex
from retrieval.lexical import Lexicon, boost
from retrieval.subqueries import SubqueryConfig, fuse_parts, segments
from retrieval.taxonomy import taxonomy_of

# A filtered request searches deeper, in proportion to how much the filter removes, up to this.
MAX_WIDEN = 20


class Retriever:
    """Shortlists assignable labels for a batch of texts."""

    def __init__(self, index: LabelIndex, aggregation: Aggregation, neighbours: int = 100,
                 subqueries: SubqueryConfig | None = None, lexical_weight: float = 0.0,
                 branching: BranchConfig | None = None, evidence: bool = True) -> None:
        self.index = index
        # Evidence (the matched example texts) is read only for prompts; without it a search
        # skips Chroma's row lookups.
        self.evidence = evidence
        self.aggregation = aggregation
        self.neighbours = neighbours
        self.subqueries = subqueries
        self.lexical_weight = lexical_weight
        self.branching = branching
        self._lexicon: Lexicon | None = None
        self._assignable: tuple[Mapping[str, Label], frozenset[str]] | None = None

    def describe(self) -> str:
        """The retrieval method in a few words, for run files and caches."""
        method = self.aggregation.describe()
        if self.subqueries:
            sub = self.subqueries
            method = (f"subqueries(n<={sub.max_ngram},w={sub.weight:g},"
                      f"words<={sub.max_words},nn={sub.neighbours})")
        if self.lexical_weight:
            method = f"{method}+lexical({self.lexical_weight:g})"
        return f"{method}+{self.branching.describe()}" if self.branching else method

    def candidates(self, texts: Sequence[str], top_k: int,
                   within: frozenset[str] | None = None) -> list[list[Candidate]]:
        """The `top_k` candidates of each text, best first (only labels in `within`, if given)."""
        if not texts:
            return []
        assignable = self.assignable()
        allowed = assignable if within is None else assignable & within
        if within is not None and not allowed:  # an empty index still says so when searched
            return [[] for _ in texts]
        widen = self.branching.widen if self.branching else 1
        pool_k = top_k * widen
        depth = max(self.neighbours, top_k) * widen
        if within is not None:  # the filter drops most hits: look further to keep enough
            depth *= min(MAX_WIDEN, -(-len(assignable) // len(allowed)))
        vectors = self.index.embedder.embed(texts)
        hits = self.index.search(vectors, depth, with_vectors=self.subqueries is not None,
                                 with_texts=self.evidence)
        if self.subqueries is None:
            shortlists = [aggregate(h, self.aggregation, pool_k, allowed) for h in hits]
        else:
            shortlists = self._with_parts(texts, vectors, hits, pool_k, allowed)
        if self.lexical_weight:
            lexicon = self._current_lexicon()
            shortlists = [boost(s, lexicon.matches(t) & allowed, self.lexical_weight, pool_k)
                          for s, t in zip(shortlists, texts, strict=True)]
        if self.branching:
            taxonomy = taxonomy_of(self.index.labels)
            return [within_branches(s, taxonomy, self.branching, top_k) for s in shortlists]
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
        part_hits = (self.index.search(part_vectors, config.neighbours, with_vectors=True,
                                       with_texts=self.evidence)
                     if flat else [])
        results, start = [], 0
        for position, (whole, text_parts) in enumerate(zip(hits, parts, strict=True)):
            end = start + len(text_parts)
            results.append(fuse_parts(whole, part_hits[start:end], vectors[position],
                                      part_vectors[start:end], config.weight, top_k, assignable))
            start = end
        return results
