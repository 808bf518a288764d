"""The lexical channel: verbatim names and aliases boost their labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.catalog import Label
from retrieval.fusion import Candidate
from retrieval.index import LabelIndex
from retrieval.lexical import Lexicon, boost
from service.factory import build_pipeline
from service.pipeline import ClassifyOptions
from tests.conftest import make_settings


def test_names_and_aliases_match_as_whole_phrases() -> None:
    lexicon = Lexicon({
        "js": Label("js", "JavaScript"), "java": Label("java", "Java (programming)",
                                                       aliases=("Java",)),
        "cpp": Label("cpp", "C++"), "group": Label("group", "Java", assignable=False)})
    assert lexicon.matches("javascript, Java and C++ developer") == {"js", "java", "cpp"}
    assert lexicon.matches("javanese coffee") == set()


def test_boost_reorders_and_adds_missing_labels() -> None:
    cands = [Candidate("a", 0.9, 0.9), Candidate("b", 0.8, 0.8), Candidate("c", 0.5, 0.5)]
    out = boost(cands, {"c", "z"}, 0.5, top_k=3)
    assert [c.label_id for c in out] == ["c", "z", "a"]
    assert out[0].similarity == 1.0 and out[1].similarity == 1.0


def test_alias_in_text_lifts_its_label(tmp_path: Path, mini_index: LabelIndex) -> None:
    text = "espresso"
    options = ClassifyOptions(mode="retrieval")
    plain = build_pipeline(make_settings(tmp_path), index=mini_index).classify(text, options)
    lexical = build_pipeline(make_settings(tmp_path, lexical_weight=0.25),
                             index=mini_index).classify(text, options)
    before = {c.id: c.similarity for c in plain.candidates}
    after = {c.id: c.similarity for c in lexical.candidates}
    assert after["food.coffee"] - before["food.coffee"] == pytest.approx(0.25, abs=1e-5)
    assert after["pets.cats"] == before["pets.cats"]
