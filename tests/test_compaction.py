"""Compaction of the label index (real Chroma, real embedder): dead graph slots from label
churn are dropped into a fresh generation while label writes and searches go on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from retrieval import generations
from retrieval.catalog import Label, load_catalog
from retrieval.embedder import Embedder
from retrieval.index import LabelIndex, chroma_client
from service.api.app import create_app
from service.api.maintenance import Maintenance, trim_heap
from tests.conftest import MINI_CATALOG, api_settings, wait_ready
from tests.test_api import _sample

QUERIES = ["my kitten keeps biting my fingers", "when is the tax return due",
           "my sourdough did not rise"]


def churn(index: LabelIndex, cycles: int) -> None:
    """What the soak's writer does: create a label, rename it, delete it."""
    for n in range(cycles):
        index.upsert(Label(id="soak.x", name=f"Soak {n}", examples=(f"soak example {n}",)))
        index.upsert(Label(id="soak.x", name=f"Soak renamed {n}",
                           examples=(f"soak example {n}",)))
        index.delete(["soak.x"])


def answers(index: LabelIndex, embedder: Embedder) -> list[list[tuple[str, str, float]]]:
    hits = index.search(embedder.embed(QUERIES), 10)
    return [[(h.label_id, h.text, round(h.similarity, 5)) for h in row] for row in hits]


def stored_collections(db: Path) -> set[str]:
    return {collection.name for collection in chroma_client(db).list_collections()}


def test_compaction_drops_dead_slots_and_keeps_every_label(tmp_path: Path,
                                                           embedder: Embedder) -> None:
    db = tmp_path / "db"
    index = LabelIndex(chroma_client(db), embedder)
    index.sync(load_catalog(MINI_CATALOG))
    before = answers(index, embedder)
    assert index.dead_slots() == 0
    churn(index, 20)  # 3 vectors and 2 records written per cycle, none of them live after
    assert index.dead_slots() == 20 * 5
    assert index.compaction_due(ratio=0.1, minimum=0) and not index.compaction_due()

    assert index.compact() == 100
    assert index.dead_slots() == 0 and answers(index, embedder) == before
    assert stored_collections(db) == {*generations.names("labelrank", 1), "labelrank-journal"}
    reopened = LabelIndex(chroma_client(db), embedder)  # another process opening it later
    assert reopened.fingerprint() == index.fingerprint() and reopened.dead_slots() == 0
    assert reopened.vector_count() == index.vector_count()
    assert answers(reopened, embedder) == before
    assert reopened.examples("pets.dogs") == index.examples("pets.dogs")
    churn(index, 1)
    assert index.dead_slots() == 5  # counting goes on in the new generation


class PausingIndex(LabelIndex):
    """Runs `during` once, right after the first copying pass (the window writes can hit)."""

    during: list[Callable[[], object]]

    def _copy(self, label_ids: list[str], vectors, records, again: bool = False) -> None:
        super()._copy(label_ids, vectors, records, again)
        while getattr(self, "during", None):
            self.during.pop(0)()


def test_writes_and_searches_during_a_compaction_are_kept(tmp_path: Path,
                                                          embedder: Embedder) -> None:
    db = tmp_path / "db"
    index = PausingIndex(chroma_client(db), embedder)
    index.sync(load_catalog(MINI_CATALOG))
    churn(index, 5)
    hamsters = Label(id="pets.hamsters", name="Hamsters", parent="pets",
                     examples=("my hamster runs on its wheel at night",))
    index.during = [lambda: index.upsert(hamsters),
                    lambda: index.upsert(Label(id="pets.cats", name="Felines", parent="pets",
                                               examples=("the cat naps in the sun",))),
                    lambda: index.delete(["money.taxes"])]
    failures: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        vectors = embedder.embed(QUERIES)
        while not stop.is_set():
            try:
                index.search(vectors, 10)
            except BaseException as exc:  # any failure fails the test
                failures.append(exc)

    searcher = threading.Thread(target=search)
    searcher.start()
    try:
        assert index.compact() > 0
    finally:
        stop.set()
        searcher.join(30)
    assert failures == []
    reopened = LabelIndex(chroma_client(db), embedder)
    assert reopened.get("pets.hamsters").name == "Hamsters"
    assert reopened.examples("pets.hamsters") == ["my hamster runs on its wheel at night"]
    assert reopened.get("pets.cats").name == "Felines"
    assert reopened.examples("pets.cats") == ["the cat naps in the sun"]
    assert "money.taxes" not in reopened.labels
    kitten = reopened.search(embedder.embed(["my cat naps in the sun"]), 3)[0]
    assert kitten[0].label_id == "pets.cats"
    assert not any(hit.label_id == "money.taxes" for hit in reopened.search(
        embedder.embed(["when is the tax return due"]), 20)[0])
    assert reopened.vector_count() == index.vector_count()


def test_an_unfinished_compaction_is_ignored_and_dropped_by_the_writer(
        tmp_path: Path, embedder: Embedder) -> None:
    db = tmp_path / "db"
    index = LabelIndex(chroma_client(db), embedder)
    index.sync(load_catalog(MINI_CATALOG))
    vectors, _ = index._open(1)  # what a compaction killed while copying leaves
    vectors.add(ids=["pets.cats\x1fstray"], embeddings=np.ones((1, embedder.dim)),
                documents=["stray"], metadatas=[{"label_id": "pets.cats", "kind": "name"}])
    reader = LabelIndex(chroma_client(db), embedder)
    assert reader.fingerprint() == index.fingerprint()  # still generation 0
    assert "stray" not in reader.examples("pets.cats") + [
        h.text for h in reader.search(np.ones((1, embedder.dim), dtype=np.float32), 5)[0]]
    reader.recover()
    assert stored_collections(db) == {*generations.names("labelrank", 0), "labelrank-journal"}


def test_a_maintenance_round_compacts_when_due_and_trims_the_heap(tmp_path: Path,
                                                                  embedder: Embedder) -> None:
    index = LabelIndex(chroma_client(tmp_path / "db"), embedder)
    index.sync(load_catalog(MINI_CATALOG))
    upkeep = Maintenance(lambda: index, ratio=0.1, minimum=20)
    churn(index, 3)  # 15 dead slots: not due yet
    assert upkeep.run_once() == 0 and index.dead_slots() == 15
    churn(index, 2)
    assert upkeep.run_once() == 25 and index.dead_slots() == 0
    assert trim_heap()  # glibc here; elsewhere the round only compacts


def test_the_server_compacts_while_clients_classify_and_edit(tmp_path: Path,
                                                             mini_index: LabelIndex,
                                                             embedder: Embedder) -> None:
    settings = api_settings(tmp_path)
    with TestClient(create_app(settings, load_embedder=lambda: embedder)) as client:
        wait_ready(client)
        state = client.app.state.labelrank
        assert state.maintenance._thread is not None  # the background upkeep runs
        for n in range(4):
            assert client.put("/v1/labels/soak.x", json={"name": f"Soak {n}"}).status_code == 200
            assert client.delete("/v1/labels/soak.x").status_code == 200
        assert _sample(client.get("/metrics").text, "labelrank_index_dead_slots") == 8
        stop, answers = threading.Event(), []

        def classify() -> None:
            while not stop.is_set():
                answers.append(client.post("/v1/classify", json={"text": QUERIES[0]}))

        reader = threading.Thread(target=classify)
        reader.start()
        state.maintenance.ratio, state.maintenance.minimum = 0.0, 0
        try:
            assert state.maintenance.run_once() == 8
            assert client.put("/v1/labels/soak.y", json={"name": "After"}).status_code == 200
        finally:
            stop.set()
            reader.join(30)
        metrics = client.get("/metrics").text
        assert {a.status_code for a in answers} == {200} and len(answers) > 1
        assert all(a.json()["labels"][0]["id"] == "pets.cats" for a in answers)
        assert _sample(metrics, "labelrank_index_compactions_total") == 1
        assert _sample(metrics, "labelrank_index_dead_slots") == 0
        assert client.get("/v1/labels/soak.y").json()["name"] == "After"
    assert state.maintenance._thread is None  # stopped with the app
