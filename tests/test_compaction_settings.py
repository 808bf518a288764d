"""The compaction thresholds as settings (real Chroma, real embedder, the real server): a low
threshold makes the server's index compact while clients write and read, and every answer and
every write stays as it was."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from retrieval import generations
from retrieval.embedder import Embedder
from retrieval.index import LabelIndex
from service.api.app import create_app
from service.factory import build_index
from service.settings import Settings
from tests.conftest import api_settings, make_settings, wait_ready
from tests.test_api import _sample
from tests.test_compaction import QUERIES, churn


def test_thresholds_are_settings_with_todays_values_as_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder: Embedder) -> None:
    defaults = Settings(_env_file=None)
    assert (defaults.compact_dead_ratio, defaults.compact_min_dead_slots) == (
        generations.COMPACT_RATIO, generations.COMPACT_MIN)
    monkeypatch.setenv("LABELRANK_COMPACT_DEAD_RATIO", "0.1")
    monkeypatch.setenv("LABELRANK_COMPACT_MIN_DEAD_SLOTS", "20")
    index = build_index(Settings(_env_file=None, db=tmp_path / "db"), embedder)
    assert (index.compact_ratio, index.compact_min) == (0.1, 20)
    churn(index, 5)  # 25 dead slots over the 20 set and 0.1 x the live ones
    assert index.compaction_due()
    assert not index.compaction_due(generations.COMPACT_RATIO, generations.COMPACT_MIN)


def test_a_low_threshold_compacts_the_server_index_during_writes(
        tmp_path: Path, mini_index: LabelIndex, embedder: Embedder) -> None:
    settings = api_settings(tmp_path, compact_dead_ratio=0.0, compact_min_dead_slots=10)
    with TestClient(create_app(settings, load_embedder=lambda: embedder)) as client:
        wait_ready(client)
        state = client.app.state.labelrank
        stop, answers, stale = threading.Event(), [], []

        def classify() -> None:
            while not stop.is_set():
                answers.append(client.post("/v1/classify", json={"text": QUERIES[0]}))

        def write() -> None:
            n = 0
            while not stop.is_set():
                name = f"Soak {n}"
                assert client.put("/v1/labels/soak.x", json={
                    "name": name, "examples": [f"soak example {n}"]}).status_code == 200
                if client.get("/v1/labels/soak.x").json()["name"] != name:
                    stale.append(n)
                assert client.delete("/v1/labels/soak.x").status_code == 200
                if client.get("/v1/labels/soak.x").status_code != 404:
                    stale.append(n)
                n += 1

        threads = [threading.Thread(target=classify), threading.Thread(target=write)]
        for thread in threads:
            thread.start()
        dropped = []
        try:
            # The upkeep thread checks every 30 s; its rounds run here, with the thresholds the
            # settings gave the index (nothing is set on the maintenance object).
            while len(dropped) < 2:
                if (found := state.maintenance.run_once()) > 0:
                    dropped.append(found)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert len(dropped) == 2 and all(d > 0 for d in dropped)
        assert state.pipeline.index._generation == 2
        assert stale == [] and len(answers) > 1
        assert {a.status_code for a in answers} == {200}
        assert all(a.json()["labels"][0]["id"] == "pets.cats" for a in answers)
        assert _sample(client.get("/metrics").text, "labelrank_index_compactions_total") >= 2
        assert client.put("/v1/labels/soak.y", json={"name": "After"}).status_code == 200
        assert client.get("/v1/labels/soak.y").json()["name"] == "After"


def test_todays_threshold_leaves_the_same_churn_alone(tmp_path: Path, mini_index: LabelIndex,
                                                      embedder: Embedder) -> None:
    index = build_index(make_settings(tmp_path), embedder)
    churn(index, 20)
    assert index.dead_slots() == 100 and not index.compaction_due()
