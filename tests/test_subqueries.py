"""Sub-queries: splitting and fused retrieval of several labels named in one short text."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.index import LabelIndex
from retrieval.subqueries import SubqueryConfig, split_subqueries
from service.factory import build_pipeline
from service.pipeline import ClassifyOptions
from tests.conftest import make_settings


def test_short_text_becomes_ngrams_without_stopword_only_parts() -> None:
    parts = split_subqueries("django and postgresql", SubqueryConfig(max_ngram=2))
    assert parts == ["django", "postgresql", "django and", "and postgresql"]


def test_long_text_becomes_sentences() -> None:
    text = "The patient had a fever. " + "Cough and chest pain were noted for days " * 3 + "."
    parts = split_subqueries(text, SubqueryConfig(max_words=10))
    assert parts[0] == "The patient had a fever."
    assert all(len(p.split()) <= 10 for p in parts)
    assert len(parts) >= 3


def test_subqueries_find_every_label_a_terse_text_names(tmp_path: Path,
                                                        mini_index: LabelIndex) -> None:
    text = "sourdough, espresso, tax return"
    settings = make_settings(tmp_path, subqueries=3, top_k=3)
    result = build_pipeline(settings, index=mini_index).classify(
        text, ClassifyOptions(mode="retrieval"))
    assert {c.id for c in result.candidates} == {"food.baking", "food.coffee", "money.taxes"}


def test_each_vector_is_scored_exactly_and_a_label_takes_its_best() -> None:
    import numpy as np

    from retrieval.subqueries import fuse_subqueries

    def unit(*xs: float) -> np.ndarray:
        v = np.array(xs, dtype=np.float32)
        return v / np.linalg.norm(v)

    query, part = unit(1, 0, 0), unit(0, 1, 0)
    # "a" (0) has one vector close to the text and another close to the part; "b" (1) one
    # vector halfway. Scoring per label (best whole + best part) would rank "a" first; per
    # vector, "b".
    a1, a2, b1 = unit(1, 0.05, 0), unit(0.05, 1, 0), unit(1, 1, 0)
    out = fuse_subqueries(np.array([0, 0, 1]), np.stack([a1, a2, b1]), query,
                          np.stack([part]), 0.5, 5)
    assert [label for label, _ in out] == [1, 0]
    expected_b = 0.5 * float(b1 @ query) + 0.5 * float(b1 @ part)
    assert out[0][1] == pytest.approx(expected_b, abs=1e-6)
