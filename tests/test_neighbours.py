"""Array fusion gives exactly the candidates and scores of the object path it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.fusion import Aggregation, aggregate
from retrieval.index import LabelIndex
from retrieval.neighbours import FEW_ROWS, LabelTable, Neighbours, fuse
from retrieval.retriever import Retriever

AGGREGATIONS = [Aggregation("max", 0, None)] + [
    Aggregation("rrf", k, m) for k in (1.0, 10.0, 60.0) for m in (1, 3, 5, None)]
TEXTS = ["my kitten keeps biting my fingers", "when are taxes due", "sourdough and espresso",
         "a puppy that chews shoes and a cat that scratches", "", "quantum chromodynamics",
         "dogs", "coffee beans for my espresso machine and a cake"]


@pytest.mark.parametrize("how", AGGREGATIONS, ids=[a.describe() for a in AGGREGATIONS])
@pytest.mark.parametrize("only", [None, {"pets.cats", "food.coffee", "money.taxes"}])
@pytest.mark.parametrize("rows", ["batch", "one at a time"])
def test_fuse_equals_aggregate(readonly_index: LabelIndex, how: Aggregation,
                               only: set[str] | None, rows: str) -> None:
    vectors = readonly_index.embedder.embed(TEXTS)
    allowed = frozenset(only or (i for i, lab in readonly_index.labels.items() if lab.assignable))
    depth = 40  # every vector of the mini catalog: many ties and long groups
    top_k = 2 if only else 5
    expected = [aggregate(hits, how, top_k, allowed)
                for hits in readonly_index.search(vectors, depth, with_texts=False)]
    table = LabelTable.of(readonly_index.labels)
    found = Neighbours.of(*readonly_index.nearest_ids(vectors, depth), table)
    mask = table.mask(allowed)
    if rows == "batch":
        assert len(TEXTS) > FEW_ROWS  # the numpy path
        assert fuse(found, how, top_k, mask) == expected
    else:  # the plain-Python path for a few rows
        assert [fuse(_row(found, n), how, top_k, mask)[0]
                for n in range(len(TEXTS))] == expected
    assert any(len(c) == top_k for c in expected)  # the cut is exercised


def test_retriever_candidates_match_with_and_without_hit_objects(
        readonly_index: LabelIndex) -> None:
    arrays = Retriever(readonly_index, Aggregation(), 30, evidence=False)
    objects = Retriever(readonly_index, Aggregation(), 30, evidence=True)
    for fast, slow in zip(arrays.candidates(TEXTS, 8), objects.candidates(TEXTS, 8), strict=True):
        assert [(c.label_id, c.score, c.similarity) for c in fast] == [
            (c.label_id, c.score, c.similarity) for c in slow]
        assert all(c.evidence == () for c in fast)


def _row(found: Neighbours, n: int) -> Neighbours:
    """Row `n` alone."""
    return Neighbours(found.labels[n:n + 1], found.similarities[n:n + 1],
                      found.vector_ids[n:n + 1], found.table)


@pytest.mark.parametrize("rows", [1, FEW_ROWS + 1])
def test_ties_in_score_and_similarity_go_by_label_id(rows: int) -> None:
    table = LabelTable.of(["a", "b", "c", "d"])
    labels = np.array([[2, 0, 3, 1]] * rows)  # c, a, d (not allowed), b: all equally near
    found = Neighbours(labels, np.full(labels.shape, 0.5), [["v"] * 4] * rows, table)
    shortlists = fuse(found, Aggregation("max", 0, None), 3, table.mask(["a", "b", "c"]))
    assert [[c.label_id for c in row] for row in shortlists] == [["a", "b", "c"]] * rows
