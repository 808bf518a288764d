"""Embedder tuning on a synthetic catalog: a planted confusable pair moves apart (measured),
the tuned model loads offline, and the old index refuses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.catalog import load_catalog
from retrieval.embedder import DEFAULT_MODEL, SentenceTransformerEmbedder, resolve_model_path
from retrieval.errors import IndexMismatchError
from retrieval.index import LabelIndex, chroma_client
from retrieval.tune.pairs import Row, distinct_label_batches
from retrieval.tune.train import PROVENANCE_FILE, TuneConfig, TuningError, tune

EXAMPLES = {
    "card.lost": ("lost card", ["I lost my card", "I can't find my card anywhere",
                                "I misplaced my bank card", "my card is missing"]),
    "card.stolen": ("stolen card", ["someone stole my card", "my card was stolen",
                                    "a thief took my bank card", "my wallet got stolen"]),
    "weather": ("weather forecast", ["will it rain tomorrow", "what's the forecast for today",
                                     "is it going to be sunny"]),
    "music": ("play music", ["play some jazz", "put on my workout playlist",
                             "I want to hear rock music"]),
    "alarm": ("set an alarm", ["wake me up at 7", "set an alarm for six thirty",
                               "alarm for tomorrow morning please"]),
    "recipe": ("cooking recipe", ["how do I make lasagna", "give me a pancake recipe",
                                  "what can I cook with eggs and rice"]),
}
LOST, STOLEN = EXAMPLES["card.lost"][1], EXAMPLES["card.stolen"][1]


def write_data(folder: Path) -> tuple[Path, Path]:
    """The synthetic catalog (names only) and its labelled training texts."""
    folder.mkdir(parents=True, exist_ok=True)
    catalog, train = folder / "catalog.jsonl", folder / "train.jsonl"
    catalog.write_text("".join(json.dumps({"id": lid, "name": name}) + "\n"
                               for lid, (name, _) in EXAMPLES.items()))
    train.write_text("".join(json.dumps({"text": t, "labels": [lid]}) + "\n"
                             for lid, (_, texts) in EXAMPLES.items() for t in texts))
    return catalog, train


def pair_similarity(embedder: SentenceTransformerEmbedder) -> tuple[float, float]:
    """Mean similarity between the planted pair's texts, and within each of them."""
    lost, stolen = embedder.embed(LOST), embedder.embed(STOLEN)
    off_diagonal = ~np.eye(len(LOST), dtype=bool)
    within = ((lost @ lost.T)[off_diagonal].mean() + (stolen @ stolen.T)[off_diagonal].mean()) / 2
    return float((lost @ stolen.T).mean()), float(within)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory,
          embedder: SentenceTransformerEmbedder) -> dict:
    """One tiny tuning run, shared by the tests below."""
    root = tmp_path_factory.mktemp("tune")
    catalog, train = write_data(root / "data")
    index = LabelIndex(chroma_client(root / "db"), embedder)
    index.sync(load_catalog(catalog).with_examples(
        {lid: texts for lid, (_, texts) in EXAMPLES.items()}))
    config = TuneConfig(epochs=1, batch_size=8, learning_rate=3e-4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured 5x faster than 2 threads on a busy 2-core host
    try:
        report = tune(index, train, root / "model", config, dev=train)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "catalog": catalog, "train": train, "index": index,
            "report": report, "model": root / "model",
            "embedder": SentenceTransformerEmbedder(str(root / "model"))}


def test_tuning_moves_the_planted_pair_apart(tuned: dict,
                                             embedder: SentenceTransformerEmbedder) -> None:
    between_before, within_before = pair_similarity(embedder)
    between_after, within_after = pair_similarity(tuned["embedder"])
    assert between_after < between_before - 0.2, (between_before, between_after)
    assert within_after - between_after > within_before - between_before + 0.2
    report = tuned["report"]
    assert report.pairs == 2 * sum(len(t) for _, t in EXAMPLES.values())
    assert report.mined_negatives == report.pairs  # the index always had a qualifying neighbour
    assert report.dev_accuracy_after >= report.dev_accuracy_before


def test_hard_negatives_come_from_the_confusable_label(embedder: SentenceTransformerEmbedder,
                                                       tuned: dict) -> None:
    from retrieval.tune.train import labelled_texts, training_rows

    rows = training_rows(tuned["index"], labelled_texts(tuned["index"], tuned["train"]),
                         TuneConfig())
    lost_rows = [r for r in rows if r.owners == {"card.lost"}]
    assert lost_rows and all(r.negative_label == "card.stolen" for r in lost_rows)
    assert all(r.negative not in (r.anchor, r.positive) for r in rows)


def test_tuned_model_loads_offline_from_its_directory(tuned: dict, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # no cache to fall back on
    model = SentenceTransformerEmbedder(str(tuned["model"]))
    assert model.dim == 384 and model.embed(["hello"]).shape == (1, 384)
    provenance = json.loads((tuned["model"] / PROVENANCE_FILE).read_text())
    assert provenance["base_model"] == DEFAULT_MODEL and provenance["steps"] > 0


def test_reindex_with_tuned_model_and_old_index_refuses_it(tuned: dict) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABELRANK_", "OPENAI_"))}
    env["LABELRANK_EMBEDDER"] = str(tuned["model"])
    cli = [sys.executable, "-c", "from eval.cli import main; main()"]
    new_db = tuned["root"] / "db-tuned"
    done = subprocess.run([*cli, "index", str(tuned["catalog"]), "--examples",
                           str(tuned["train"]), "--db", str(new_db)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    tuned_index = LabelIndex(chroma_client(new_db), tuned["embedder"])
    hits = tuned_index.search(tuned["embedder"].embed(["a pickpocket took my card"]), 3)
    assert hits[0][0].label_id == "card.stolen"
    with pytest.raises(IndexMismatchError):
        LabelIndex(chroma_client(tuned["root"] / "db"), tuned["embedder"])
    done = subprocess.run([*cli, "classify", "a pickpocket took my card", "--db",
                           str(tuned["root"] / "db")],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 2 and "embedder_mismatch" in done.stderr


def test_refuses_to_overwrite_the_index_model(tuned: dict) -> None:
    with pytest.raises(TuningError, match="model this index was built with"):
        tune(tuned["index"], tuned["train"], resolve_model_path(DEFAULT_MODEL), TuneConfig())
    with pytest.raises(TuningError, match="not empty"):
        tune(tuned["index"], tuned["train"], tuned["model"], TuneConfig())


def test_refuses_a_test_split(tuned: dict, tmp_path: Path) -> None:
    test_split = tmp_path / "test.jsonl"
    test_split.write_text(tuned["train"].read_text())
    with pytest.raises(TuningError, match="test split"):
        tune(tuned["index"], test_split, tmp_path / "out", TuneConfig())


def test_batches_have_no_in_batch_false_negatives() -> None:
    rows = [Row(f"t{i}", "p", "n", frozenset({f"L{i % 5}"}), f"L{(i + 1) % 5}", "text", True)
            for i in range(40)]
    batches = list(distinct_label_batches(rows, list(range(40)), batch_size=8))
    assert sorted(i for b in batches for i in b) == list(range(40))
    for batch in batches:
        owners = [label for i in batch for label in rows[i].owners]
        assert len(owners) == len(set(owners))
        assert not {rows[i].negative_label for i in batch} & set(owners)


def test_time_budget_stops_training_early(tmp_path: Path, tuned: dict) -> None:
    config = TuneConfig(epochs=3, batch_size=4, learning_rate=3e-4, max_seconds=0.01)
    report = tune(tuned["index"], tuned["train"], tmp_path / "model", config)
    assert report.steps == 1 < report.planned_steps  # the first step ends past the deadline
    assert (tmp_path / "model" / PROVENANCE_FILE).is_file()  # what it learnt is still saved
