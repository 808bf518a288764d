"""Array fusion gives exactly the candidates and scores of the object path it replaces."""

from __future__ import annotations

import pytest

from retrieval.fusion import Aggregation, aggregate
from retrieval.index import LabelIndex
from retrieval.neighbours import LabelTable, Neighbours, fuse
from retrieval.retriever import Retriever

AGGREGATIONS = [Aggregation("max", 0, None)] + [
    Aggregation("rrf", k, m) for k in (1.0, 10.0, 60.0) for m in (1, 3, 5, None)]
TEXTS = ["my kitten keeps biting my fingers", "when are taxes due", "sourdough and espresso",
         "a puppy that chews shoes and a cat that scratches", "", "quantum chromodynamics",
         "dogs", "coffee beans for my espresso machine and a cake"]


@pytest.mark.parametrize("how", AGGREGATIONS, ids=[a.describe() for a in AGGREGATIONS])
@pytest.mark.parametrize("only", [None, {"pets.cats", "food.coffee", "money.taxes"}])
def test_fuse_equals_aggregate(readonly_index: LabelIndex, how: Aggregation,
                               only: set[str] | None) -> None:
    vectors = readonly_index.embedder.embed(TEXTS)
    allowed = frozenset(only or (i for i, lab in readonly_index.labels.items() if lab.assignable))
    depth = 40  # every vector of the mini catalog: many ties and long groups
    top_k = 2 if only else 5
    expected = [aggregate(hits, how, top_k, allowed)
                for hits in readonly_index.search(vectors, depth, with_texts=False)]
    table = LabelTable.of(readonly_index.labels)
    found = Neighbours.of(*readonly_index.nearest_ids(vectors, depth), table)
    assert fuse(found, how, top_k, table.mask(allowed)) == expected
    assert any(len(c) == top_k for c in expected)  # the cut is exercised


def test_retriever_candidates_match_with_and_without_hit_objects(
        readonly_index: LabelIndex) -> None:
    arrays = Retriever(readonly_index, Aggregation(), 30, evidence=False)
    objects = Retriever(readonly_index, Aggregation(), 30, evidence=True)
    for fast, slow in zip(arrays.candidates(TEXTS, 8), objects.candidates(TEXTS, 8), strict=True):
        assert [(c.label_id, c.score, c.similarity) for c in fast] == [
            (c.label_id, c.score, c.similarity) for c in slow]
        assert all(c.evidence == () for c in fast)
