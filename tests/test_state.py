"""State under concurrency and crashes: label edits while 16 clients classify; `kill -9`
during `labelrank index`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from retrieval.catalog import load_catalog
from retrieval.embedder import Embedder
from retrieval.index import LabelIndex, chroma_client
from service.api.app import create_app
from service.results import ClassifyResult
from tests.conftest import MINI_CATALOG, make_settings
from tests.test_api import serve, wait_ready

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["my kitten keeps biting my fingers", "my hamster runs all night on its wheel",
         "how do I file my taxes", "my sourdough bread did not rise", "best espresso beans"]
OLD = {"pets.cats": "Cats"}
NEW = {"pets.cats": "Felines", "pets.hamsters": "Hamsters"}
HAMSTER = {"name": "Hamsters", "parent": "pets", "description": "Small rodents kept as pets.",
           "examples": ["my hamster runs on its wheel at night"]}


def test_label_updates_while_16_clients_classify(tmp_path: Path, mini_index: LabelIndex,
                                                 embedder: Embedder) -> None:
    stop = threading.Event()
    answers: list[httpx.Response] = []
    catalog_names = {lab.id: lab.name for lab in load_catalog(MINI_CATALOG).labels.values()}

    def classify(url: str, worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            n = worker
            while not stop.is_set():
                answers.append(http.post("/v1/classify", json={"text": TEXTS[n % len(TEXTS)]}))
                n += 1

    settings = make_settings(tmp_path, top_k=5, threshold=0.35, relative_threshold=0.3)
    with serve(create_app(settings, load_embedder=lambda: embedder)) as url, \
            httpx.Client(base_url=url, timeout=60) as http, ThreadPoolExecutor(16) as pool:
        wait_ready(http)
        clients = [pool.submit(classify, url, i) for i in range(16)]
        writes = 0
        for _ in range(3):  # old -> new -> old catalog, label by label
            assert http.patch("/v1/labels/pets.cats", json={"name": "Felines"}).status_code == 200
            assert http.put("/v1/labels/pets.hamsters", json=HAMSTER).status_code == 200
            assert http.patch("/v1/labels/pets.cats", json={"name": "Cats"}).status_code == 200
            assert http.delete("/v1/labels/pets.hamsters").status_code == 200
            writes += 4
        stop.set()
        for future in clients:
            future.result()
    assert len(answers) >= 16 and writes == 12
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers
                                                       if a.status_code != 200][:3]
    for answer in answers:
        body = answer.json()
        for label in body["labels"] + body["candidates"]:
            # Every label is as it is in the old catalog or in the new one.
            allowed = {catalog_names.get(label["id"]), OLD.get(label["id"]),
                       NEW.get(label["id"])} - {None}
            assert label["name"] in allowed, label


def synthetic_catalog(path: Path, labels: int) -> None:
    """A catalog big enough that indexing it takes several seconds."""
    with path.open("w") as handle:
        for i in range(labels):
            handle.write(json.dumps({
                "id": f"topic.{i:05d}", "name": f"Topic {i} about subject {i * 7 % 101}",
                "description": f"Texts that discuss subject {i} in area {i % 37}.",
                "aliases": [f"subject {i}"], "examples": [f"an example text for topic {i}"]})
                         + "\n")


def run_index(catalog: Path, db: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from eval.cli import main; main()", "index", str(catalog),
         "--db", str(db)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "LABELRANK_EMBED_THREADS": "1"})


@pytest.mark.slow
def test_kill_9_during_index_leaves_an_index_that_opens_and_a_rerun_completes(
        tmp_path: Path, embedder: Embedder) -> None:
    catalog, db = tmp_path / "catalog.jsonl", tmp_path / "db"
    synthetic_catalog(catalog, 3000)
    process = run_index(catalog, db)
    deadline = time.monotonic() + 180
    # Kill once vectors are being written: the sqlite file grows past its empty size.
    while not ((db / "chroma.sqlite3").is_file()
               and (db / "chroma.sqlite3").stat().st_size > 3_000_000):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "indexing never started writing"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(30)

    # The interrupted index opens and answers.
    index = LabelIndex(chroma_client(db), embedder)
    partial = len(index.labels)
    assert 0 <= partial < 3000
    settings = make_settings(tmp_path, db=db, top_k=5)
    from service.factory import build_pipeline

    result = build_pipeline(settings, index=index).classify_batch(["subject 12"])[0]
    # It answers from the labels whose records were written, and only from those; chunks are
    # written in catalog order, so whenever any label is there, topic 12 (chunk 1) is.
    assert isinstance(result, ClassifyResult)
    assert {c.id for c in result.candidates} <= set(index.labels)
    if partial:
        assert result.candidates[0].id == "topic.00012"
    del index

    # Re-running the same command completes it.
    rerun = run_index(catalog, db)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()[-2000:]
    done = LabelIndex(chroma_client(db), embedder)
    assert len(done.labels) == 3000
    assert done.vector_count() >= 3000 * 3
