"""Texts in, candidate shortlists out: embed, search the index, fuse ranks, run the stages."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from retrieval.catalog import Label
from retrieval.fusion import Aggregation, Candidate, aggregate
from retrieval.index import Hit, LabelIndex
from retrieval.neighbours import LabelTable, Neighbours, fuse
from retrieval.stages import CandidateStage, Search, Shortlists, describe_method
from retrieval.subqueries import with_phrases

# A filtered request searches deeper, in proportion to how much the filter removes, up to this.
MAX_WIDEN = 20


class Retriever:
    """Shortlists assignable labels for a batch of texts.

    `candidates` is `search` then `rank`; calibration calls the two steps itself, so that one
    search is ranked under many settings by exactly the code that serves.
    """

    def __init__(self, index: LabelIndex, aggregation: Aggregation, neighbours: int = 100,
                 stages: Sequence[CandidateStage] = (), evidence: bool = True) -> None:
        self.index = index
        # Evidence (the matched example texts) is read only for prompts; without it a search
        # skips Chroma's row lookups.
        self.evidence = evidence
        self.aggregation = aggregation
        self.neighbours = neighbours
        self.stages = tuple(stages)
        self._assignable: tuple[Mapping[str, Label], frozenset[str]] | None = None
        self._tables: tuple[Mapping[str, Label], LabelTable, np.ndarray] | None = None

    def describe(self, aggregation: Aggregation | None = None,
                 stages: Sequence[CandidateStage] | None = None) -> str:
        """The retrieval method in a few words, for run files and caches."""
        return describe_method(aggregation or self.aggregation,
                               self.stages if stages is None else stages)

    def candidates(self, texts: Sequence[str], top_k: int, within: frozenset[str] | None = None,
                   phrases: Sequence[Sequence[str]] | None = None) -> list[list[Candidate]]:
        """The `top_k` candidates of each text, best first (only labels in `within`, if given;
        each text's `phrases`, if given, searched as sub-queries beside it)."""
        if not texts:
            return []
        if within is not None and not self.assignable() & within:
            return [[] for _ in texts]  # an empty index still says so when searched
        if not phrases or not any(phrases):
            return self.rank(self.search(texts, top_k, within))
        asked = [i for i, own in enumerate(phrases) if own]
        rest = [i for i, own in enumerate(phrases) if not own]
        stages = with_phrases(self.stages, [phrases[i] for i in asked])
        found = dict(zip(asked, self.rank(self.search([texts[i] for i in asked], top_k, within),
                                          stages=stages), strict=True))
        if rest:
            found.update(zip(rest, self.rank(self.search([texts[i] for i in rest], top_k,
                                                         within)), strict=True))
        return [found[i] for i in range(len(texts))]

    def search(self, texts: Sequence[str], top_k: int, within: frozenset[str] | None = None,
               widen: int | None = None, with_vectors: bool | None = None) -> Search:
        """Embed the texts and fetch their neighbours, deep enough for the configured stages
        (or for a pool `widen` times deeper than the shortlist)."""
        assignable = self.assignable()
        allowed = assignable if within is None else assignable & within
        depth_unit = max(self.neighbours, top_k)
        if within is not None and allowed:  # the filter drops most hits: look further
            depth_unit *= min(MAX_WIDEN, -(-len(assignable) // len(allowed)))
        vectors_too = (any(s.needs_vectors for s in self.stages) if with_vectors is None
                       else with_vectors)
        depth = depth_unit * (widen or _widen(self.stages))
        found: list[list[Hit]] | Neighbours
        if vectors_too or self.evidence:
            vectors = self.index.embedder.embed(texts)
            found = self.index.search(vectors, depth, with_vectors=vectors_too,
                                      with_texts=self.evidence)
        else:  # ids and distances only: fused as arrays, no object per hit
            vectors, ids, distances = self._embed_and_query(texts, depth)
            found = Neighbours.of(ids, distances, self._table()[0])
        return Search(texts, vectors, found, allowed, top_k, depth_unit, self.evidence)

    def _embed_and_query(self, texts: Sequence[str],
                         depth: int) -> tuple[np.ndarray, list[list[str]], list[list[float]]]:
        """Vectors and raw neighbours, one step after the other."""
        # Embedding the next chunk in a thread while Chroma answers the current one was measured
        # slower on 2 cores (a 2,000-text batch at 21,000 vectors: 1.9x embed + query per text,
        # against 1.05x sequential): both already use every core, and they fight over them.
        vectors = self.index.embedder.embed(texts)
        return (vectors, *self.index.nearest_ids(vectors, depth))

    def rank(self, search: Search, aggregation: Aggregation | None = None,
             stages: Sequence[CandidateStage] | None = None) -> Shortlists:
        """Each text's shortlist from a search: aggregation, then the stages in order."""
        stages = self.stages if stages is None else stages
        widen = _widen(stages)
        pool_k = search.top_k * widen
        depth = search.depth_unit * widen
        if search.depth > depth:  # searched deeper for other settings
            search = search.first(depth)
        how = aggregation or self.aggregation
        pools: Shortlists | None = None  # a rescoring stage scores the raw hits itself
        if not any(s.rescores for s in stages):
            pools = (fuse(search.found, how, pool_k, self._allowed_mask(search.allowed))
                     if isinstance(search.found, Neighbours)
                     else [aggregate(h, how, pool_k, search.allowed) for h in search.found])
        for stage in stages:
            pools = stage.apply(self.index, search, pools, pool_k)
        assert pools is not None
        return pools

    def assignable(self) -> frozenset[str]:
        """Ids of the labels that may be answers (not taxonomy group nodes)."""
        labels = self.index.labels
        # The index swaps in a new labels dict on every change, so identity tells staleness.
        if self._assignable is None or self._assignable[0] is not labels:
            ids = frozenset(lid for lid, lab in labels.items() if lab.assignable)
            self._assignable = (labels, ids)
        return self._assignable[1]

    def _table(self) -> tuple[LabelTable, np.ndarray]:
        """Label numbers for array fusion and the mask of assignable ones, per labels snapshot."""
        labels = self.index.labels
        if self._tables is None or self._tables[0] is not labels:
            table = LabelTable.of(labels)
            self._tables = (labels, table, table.mask(self.assignable()))
        return self._tables[1], self._tables[2]

    def _allowed_mask(self, allowed: frozenset[str]) -> np.ndarray:
        table, assignable = self._table()
        # Identity, not equality: comparing two 30,000-id sets cost 1.4 ms per single classify.
        return assignable if allowed is self.assignable() else table.mask(allowed)


def _widen(stages: Sequence[CandidateStage]) -> int:
    return math.prod(stage.widen for stage in stages)
