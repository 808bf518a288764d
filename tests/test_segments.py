"""Sub-queries: segmentation and fused retrieval of several labels named in one short text."""

from __future__ import annotations

from pathlib import Path

from retrieval.index import LabelIndex
from retrieval.segments import SubqueryConfig, segments
from service.factory import build_pipeline
from service.pipeline import ClassifyOptions
from tests.conftest import make_settings


def test_short_text_becomes_ngrams_without_stopword_only_parts() -> None:
    parts = segments("django and postgresql", SubqueryConfig(max_ngram=2))
    assert parts == ["django", "postgresql", "django and", "and postgresql"]


def test_long_text_becomes_sentences() -> None:
    text = "The patient had a fever. " + "Cough and chest pain were noted for days " * 3 + "."
    parts = segments(text, SubqueryConfig(max_words=10))
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
