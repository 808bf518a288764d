"""The pipeline in retrieval mode: multi-label, none, bad text, never a group label."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.errors import InvalidTextError, TextTooLongError
from retrieval.index import LabelIndex
from service.factory import build_pipeline
from service.pipeline import ClassifyOptions, NoLLMConfigured
from service.results import ClassifyResult, ItemError
from tests.conftest import make_settings

RETRIEVAL = ClassifyOptions(mode="retrieval")


@pytest.fixture
def pipeline(tmp_path: Path, mini_index: LabelIndex):
    return build_pipeline(make_settings(tmp_path, top_k=5, threshold=0.35,
                                        relative_threshold=0.3), index=mini_index)


def test_clear_text_gets_its_label(pipeline) -> None:
    result = pipeline.classify("my kitten keeps biting my fingers", RETRIEVAL)
    assert result.mode == "retrieval" and not result.degraded
    assert result.labels[0].id == "pets.cats"
    assert len(result.candidates) == 5


def test_group_labels_are_never_candidates(pipeline) -> None:
    result = pipeline.classify("pets and animals at home", RETRIEVAL)
    ids = {c.id for c in result.candidates} | {lab.id for lab in result.labels}
    assert not ids & {"pets", "food", "money"}


def test_unrelated_text_gets_no_label_and_a_reason(pipeline) -> None:
    result = pipeline.classify("the eigenvalues of a symmetric matrix are real", RETRIEVAL)
    assert result.labels == []
    assert "below the threshold" in (result.reason or "")
    assert result.candidates  # the shortlist is still reported


def test_text_about_two_branches_can_get_both(tmp_path: Path, mini_index: LabelIndex) -> None:
    pipeline = build_pipeline(make_settings(tmp_path, top_k=8, threshold=0.3,
                                            relative_threshold=0.1), index=mini_index)
    result = pipeline.classify("my dog knocked my espresso cup off the table", RETRIEVAL)
    assert {"pets.dogs", "food.coffee"} <= {lab.id for lab in result.labels}


@pytest.mark.parametrize(("text", "error"), [
    ("", InvalidTextError), ("   \n\t", InvalidTextError), ("x" * 1_000_000, TextTooLongError),
])
def test_bad_text_is_a_specific_error(pipeline, text: str, error: type) -> None:
    with pytest.raises(error):
        pipeline.classify(text, RETRIEVAL)


def test_bad_items_do_not_fail_the_batch(pipeline) -> None:
    texts = ["best milk for a cappuccino", "", "x" * 1_000_000, "filing my tax return late"]
    outcomes = pipeline.classify_batch(texts, RETRIEVAL)
    assert len(outcomes) == 4
    assert isinstance(outcomes[0], ClassifyResult) and outcomes[0].labels[0].id == "food.coffee"
    assert isinstance(outcomes[1], ItemError) and outcomes[1].error["code"] == "invalid_text"
    assert isinstance(outcomes[2], ItemError) and outcomes[2].error["code"] == "text_too_long"
    assert isinstance(outcomes[3], ClassifyResult) and outcomes[3].labels[0].id == "money.taxes"


def test_llm_mode_without_an_llm_is_refused(pipeline) -> None:
    with pytest.raises(NoLLMConfigured):
        pipeline.classify("hello", ClassifyOptions(mode="llm"))
    assert pipeline.classify("my cat", ClassifyOptions(mode="auto")).mode == "retrieval"
