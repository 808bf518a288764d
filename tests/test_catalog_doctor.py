"""`labelrank doctor catalog` finds a planted duplicate label, a bare label and a misleading
name, and draws the map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.catalog_map import confused_pairs
from eval.cli import app
from retrieval.catalog import Catalog, Label
from retrieval.diagnose import diagnose
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.index import LabelIndex, chroma_client

LABELS = [
    Label("refund", "refund request", examples=(
        "I want my money back", "please refund my order", "can I get a refund for this",
        "return the payment to my account")),
    # The planted duplicate: another id for the same thing, with paraphrased examples.
    Label("money-back", "money back", examples=(
        "I'd like my money back", "refund my order please", "can you refund this purchase",
        "send the payment back to my account")),
    Label("weather", "weather", examples=(
        "will it rain tomorrow", "how hot will it be today", "is it sunny outside")),
    Label("music", "play music", examples=(
        "play some jazz", "put on my workout playlist", "I want to hear rock music")),
    Label("alarm", "set an alarm", description="Create a wake-up alarm at a time.", examples=(
        "wake me up at seven", "set an alarm for six thirty")),
    # Misleading name: it says rain, its examples are about umbrellas for sale.
    Label("shop-umbrella", "rain tomorrow", examples=(
        "buy a folding umbrella", "order an umbrella online", "umbrella prices")),
    Label("bare", "miscellaneous"),  # no examples, no description
    Label("group", "everyday things", assignable=False),  # a group node may be bare
]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> Path:
    path = tmp_path_factory.mktemp("doctor") / "db"
    LabelIndex(chroma_client(path), embedder).sync(Catalog({lab.id: lab for lab in LABELS}))
    return path


def test_diagnosis_finds_planted_problems(db: Path, embedder: SentenceTransformerEmbedder) -> None:
    found = diagnose(LabelIndex(chroma_client(db), embedder), top=5)
    top = found.overlaps[0]
    assert {top.a, top.b} == {"refund", "money-back"}
    assert top.score >= 0.5 and top.centroid_similarity > 0.8
    assert top.collisions and all({c.label_id, c.other_id} == {"refund", "money-back"}
                                  for c in top.collisions)
    assert all({ov.a, ov.b} != {"weather", "music"} for ov in found.overlaps)
    assert found.bare == ["bare"]
    misses = {m.label_id: m for m in found.name_misses}
    assert "shop-umbrella" in misses and misses["shop-umbrella"].ahead[0] == "weather"
    assert "alarm" not in misses
    assert set(found.centroids) == {lab.id for lab in LABELS}


def test_confused_pairs_count_gold_to_wrong_prediction() -> None:
    run = {"predictions": [
        {"gold": ["a"], "labels": ["b"]}, {"gold": ["a"], "labels": ["b"]},
        {"gold": ["a"], "labels": ["a"]}, {"gold": ["c"], "labels": []},
        {"gold": ["c"], "labels": ["a", "c"]}]}
    assert confused_pairs(run) == [("a", "b", 2), ("c", "a", 1)]


def test_doctor_catalog_command_prints_and_draws(db: Path, tmp_path: Path) -> None:
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"predictions": [
        {"gold": ["weather"], "labels": ["shop-umbrella"]}]}))
    png = tmp_path / "map.png"
    result = CliRunner().invoke(app, ["doctor", "catalog", "--db", str(db), "--run",
                                      str(run_file), "--map", str(png)])
    assert result.exit_code == 0, result.output
    assert "refund 'refund request'" in result.output and "'money back'" in result.output
    assert "bare 'miscellaneous'" in result.output
    assert "weather 'weather' -> shop-umbrella" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
