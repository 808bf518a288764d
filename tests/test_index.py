"""The label index against real Chroma and the real embedder: build, update, guard."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from retrieval.catalog import Catalog, Label, load_catalog
from retrieval.embedder import SentenceTransformerEmbedder, resolve_model_path
from retrieval.errors import CatalogError, EmptyIndexError, IndexMismatchError, UnknownLabelError
from retrieval.index import LabelIndex, chroma_client, label_of, label_texts, vector_id
from retrieval.journal import Journal
from service.factory import build_index, build_pipeline
from service.jobs.indexing import build_or_update
from service.pipeline import ClassifyOptions
from service.settings import Settings
from tests.conftest import MINI_CATALOG, make_settings

ROOT = Path(__file__).resolve().parents[1]

VOLCANO = Label(id="geo.volcanoes", name="Volcanoes",
                description="Eruptions, lava and volcanic activity.",
                examples=("the volcano erupted and lava reached the village",
                          "ash clouds from the eruption grounded flights"))


def top_label(settings: Settings, index: LabelIndex, text: str) -> str | None:
    result = build_pipeline(settings, index=index).classify(text, ClassifyOptions("retrieval"))
    return result.labels[0].id if result.labels else None


def test_every_label_text_is_a_vector(mini_index: LabelIndex) -> None:
    catalog = load_catalog(MINI_CATALOG)
    expected = sum(len(label_texts(lab)) for lab in catalog.labels.values())
    assert mini_index.vector_count() == expected
    assert set(mini_index.labels) == set(catalog.labels)
    assert "my puppy keeps chewing the sofa" in mini_index.examples("pets.dogs")


def test_resync_of_unchanged_catalog_writes_nothing(mini_index: LabelIndex) -> None:
    report = mini_index.sync(load_catalog(MINI_CATALOG))
    assert (report.vectors_added, report.vectors_removed, report.labels_unchanged) == (0, 0, 9)


def test_changed_label_is_the_only_one_reembedded(mini_index: LabelIndex) -> None:
    catalog = load_catalog(MINI_CATALOG)
    dogs = catalog.labels["pets.dogs"]
    changed = Catalog({**catalog.labels,
                       "pets.dogs": replace(dogs, examples=(*dogs.examples[1:], "a new dog"))})
    report = mini_index.sync(changed)
    assert report.changed_ids == ["pets.dogs"]
    assert (report.vectors_added, report.vectors_removed) == (1, 1)
    assert "a new dog" in mini_index.examples("pets.dogs")


def test_label_lifecycle_changes_the_next_answer(settings: Settings,
                                                 mini_index: LabelIndex) -> None:
    text = "lava poured down the side of the erupting volcano"
    assert top_label(settings, mini_index, text) != "geo.volcanoes"
    mini_index.upsert(VOLCANO)
    assert top_label(settings, mini_index, text) == "geo.volcanoes"
    removed = mini_index.delete(["geo.volcanoes"])
    assert removed == len(label_texts(VOLCANO))
    assert top_label(settings, mini_index, text) != "geo.volcanoes"
    with pytest.raises(UnknownLabelError):
        mini_index.get("geo.volcanoes")


def test_pruning_removes_labels_gone_from_the_catalog(mini_index: LabelIndex) -> None:
    catalog = load_catalog(MINI_CATALOG)
    kept = {k: v for k, v in catalog.labels.items() if k != "money.taxes"}
    report = mini_index.sync(Catalog(kept))
    assert report.labels_removed == 1
    assert "money.taxes" not in mini_index.labels
    assert mini_index.vector_count() == sum(len(label_texts(v)) for v in kept.values())


def test_upsert_with_unknown_parent_is_refused(mini_index: LabelIndex) -> None:
    with pytest.raises(UnknownLabelError, match="parent"):
        mini_index.upsert(replace(VOLCANO, parent="geo"))
    assert "geo.volcanoes" not in mini_index.labels


def test_other_embedder_is_refused(tmp_path: Path, mini_index: LabelIndex) -> None:
    # The same weights under another model setting count as another embedder.
    other = make_settings(tmp_path, embedder=str(resolve_model_path("all-MiniLM-L6-v2")))
    with pytest.raises(IndexMismatchError, match="built with embedder 'all-MiniLM-L6-v2'"):
        build_index(other)


def test_fingerprint_tracks_the_catalog(mini_index: LabelIndex) -> None:
    before = mini_index.fingerprint()
    assert before["embedder"] == "all-MiniLM-L6-v2" and before["labels"] == 9
    mini_index.upsert(VOLCANO)
    assert mini_index.fingerprint()["catalog_hash"] != before["catalog_hash"]


def test_empty_index_says_so(settings: Settings,
                             embedder: SentenceTransformerEmbedder) -> None:
    index = LabelIndex(chroma_client(settings.db), embedder)
    with pytest.raises(EmptyIndexError, match="labelrank index"):
        index.search(embedder.embed(["hello"]), 5)


@pytest.mark.parametrize("bad_line", ["{oops", json.dumps({"name": "no id"})])
def test_rejected_catalog_leaves_index_untouched(tmp_path: Path, settings: Settings,
                                                 mini_index: LabelIndex, bad_line: str) -> None:
    before = (mini_index.vector_count(), mini_index.fingerprint())
    lines = MINI_CATALOG.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines, json.dumps(VOLCANO.__dict__ | {"examples": []}), bad_line]))
    with pytest.raises(CatalogError):
        build_or_update(settings, bad, [])
    reopened = build_index(settings)
    assert (reopened.vector_count(), reopened.fingerprint()) == before
    assert "geo.volcanoes" not in reopened.labels


def test_rejected_examples_leave_index_untouched(tmp_path: Path, settings: Settings,
                                                 mini_index: LabelIndex) -> None:
    before = mini_index.vector_count()
    examples = tmp_path / "train.jsonl"
    examples.write_text(json.dumps({"text": "a dog", "labels": ["pets.dogs"]}) + "\n"
                        + json.dumps({"text": "x", "labels": ["nope"]}) + "\n")
    with pytest.raises(CatalogError, match=r"train\.jsonl:2"):
        build_or_update(settings, MINI_CATALOG, [examples])
    assert build_index(settings).vector_count() == before


def test_examples_can_be_added_and_removed(settings: Settings, mini_index: LabelIndex) -> None:
    text = "the parrot repeats every word my grandmother says"
    mini_index.add_examples("pets.cats", [text, "  "])
    assert text in mini_index.examples("pets.cats")
    assert "my cat scratches the furniture" in mini_index.examples("pets.cats")
    mini_index.remove_examples("pets.cats", [text])
    assert text not in mini_index.examples("pets.cats")
    assert len(mini_index.examples("pets.cats")) == 3


def test_saved_calibration_applies_unless_set_explicitly(tmp_path: Path,
                                                         mini_index: LabelIndex) -> None:
    mini_index.save_calibration({"settings": {"threshold": 0.77, "max_labels": 2}})
    pipeline = build_pipeline(make_settings(tmp_path), index=mini_index)
    assert (pipeline.threshold.min_similarity, pipeline.threshold.max_labels) == (0.77, 2)
    explicit = build_pipeline(make_settings(tmp_path, threshold=0.1), index=mini_index)
    assert (explicit.threshold.min_similarity, explicit.threshold.max_labels) == (0.1, 2)


DELETE_ELSEWHERE = """
import sys
from types import SimpleNamespace
from retrieval.index import LabelIndex, chroma_client
embedder = SimpleNamespace(name=sys.argv[2], dim=int(sys.argv[3]))
LabelIndex(chroma_client(sys.argv[1]), embedder).delete([sys.argv[4]])
"""


def test_a_graph_hit_whose_rows_a_concurrent_write_deleted_is_skipped(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    # The interleaving the soak met by chance, made on purpose: this process's graph has loaded
    # the label's vectors, another process deletes the label, and the next search here finds
    # the vectors in the graph with no rows behind them (as a search does when a write deletes
    # rows between Chroma's graph search and its row look-up).
    settings = make_settings(tmp_path, top_k=5, threshold=0.3)
    index = build_index(settings, embedder)
    index.sync(load_catalog(MINI_CATALOG))
    query = embedder.embed(["my kitten keeps biting my fingers"])
    assert index.search(query, 5)[0][0].label_id == "pets.cats"  # the graph is in memory now

    subprocess.run([sys.executable, "-c", DELETE_ELSEWHERE, str(settings.db), embedder.name,
                    str(embedder.dim), "pets.cats"], cwd=ROOT, check=True)

    ids, _ = index.nearest_ids(query, 5)
    assert any(label_of(vid) == "pets.cats" for vid in ids[0])  # the graph still has them
    hits = index.search(query, 5)[0]
    assert hits and "pets.cats" not in {hit.label_id for hit in hits}
    assert [hit.rank for hit in hits] == list(range(1, len(hits) + 1))
    # Labels reread (as the writer's own are after its delete), graph as it was: classify
    # answers, with or without evidence texts, and never with the deleted label.
    current = LabelIndex(chroma_client(settings.db), embedder)
    assert "pets.cats" not in current.labels
    for llm_evidence in (True, False):
        pipeline = build_pipeline(settings, index=current)
        pipeline.retriever.evidence = llm_evidence
        result = pipeline.classify("my kitten keeps biting my fingers",
                                   ClassifyOptions("retrieval"))
        assert "pets.cats" not in {c.id for c in result.candidates}


def test_searches_racing_label_writes_are_answered(
        mini_index: LabelIndex, embedder: SentenceTransformerEmbedder) -> None:
    # Without asking again, Chroma failed about one such search a second here ("Error finding
    # id": the soak's 500s across compactions); every search must answer, with every label.
    queries = embedder.embed(["my kitten keeps biting my fingers", "the wifi drops"] * 20)
    label = Label(id="pets.kittens", name="Kittens", aliases=("kitty",),
                  description="young cats", examples=("my kitten bites", "kitten toys"))
    stop = time.monotonic() + 5
    failures: list[Exception] = []
    answers: list[set[str]] = []

    def write() -> None:
        while time.monotonic() < stop:
            mini_index.upsert(label)
            mini_index.delete([label.id])

    def search() -> None:
        while time.monotonic() < stop:
            try:
                found = mini_index.search(queries, 30)
            except Exception as error:  # what the test counts
                failures.append(error)
            else:
                answers.append({hit.label_id for hit in found[0]})

    threads = [threading.Thread(target=fn) for fn in (write, search, search)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert answers and all("pets.cats" in labels for labels in answers)


def stored_vector_ids(index: LabelIndex, label_id: str) -> set[str]:
    return set(index._vector_ids_of([label_id]))


def test_recover_finishes_writes_a_crash_left_marked(mini_index: LabelIndex,
                                                     settings: Settings) -> None:
    # What a process leaves when it dies between the journal's marks: the write is marked
    # and (here) none of it done. `recover` makes each label wholly what the write meant.
    journal = Journal(chroma_client(settings.db), settings.collection)
    felines = replace(mini_index.get("pets.cats"), name="Felines",
                      examples=("my cat sleeps all day", "the kitten chased a laser dot"))
    journal.begin(labels=(felines,))
    journal.begin(deleted=("money.taxes",))
    assert len(journal.pending()) == 2

    assert mini_index.recover() == 2
    assert mini_index.get("pets.cats").name == "Felines"
    assert mini_index.examples("pets.cats") == sorted(felines.examples)
    assert stored_vector_ids(mini_index, "pets.cats") == {
        vector_id("pets.cats", kind, text) for kind, text in label_texts(felines)}
    assert "money.taxes" not in mini_index.labels
    assert stored_vector_ids(mini_index, "money.taxes") == set()
    assert journal.pending() == [] and mini_index.recover() == 0
    reopened = LabelIndex(chroma_client(settings.db), mini_index.embedder)
    assert reopened.fingerprint() == mini_index.fingerprint()


def test_a_write_still_in_flight_elsewhere_is_left_alone_on_a_shared_index(
        mini_index: LabelIndex, settings: Settings) -> None:
    journal = Journal(chroma_client(settings.db), settings.collection)
    journal.begin(deleted=("money.taxes",))  # just begun: its writer may be alive
    assert mini_index.recover(shared=True) == 0 and "money.taxes" in mini_index.labels
    assert mini_index.recover() == 1 and "money.taxes" not in mini_index.labels
