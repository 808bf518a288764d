"""State under concurrency and crashes: label edits while 16 clients classify; `kill -9`
during `labelrank index` and at every write of a label PUT."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from retrieval.catalog import Label, load_catalog
from retrieval.embedder import Embedder
from retrieval.index import LabelIndex, chroma_client, label_texts, vector_id
from retrieval.journal import Journal
from service.api.app import create_app
from service.results import ClassifyResult
from tests.conftest import MINI_CATALOG, free_port, make_settings, wait_http
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


FELINES = {"name": "Felines", "parent": "pets", "description": "Cats, big and small.",
           "aliases": ["felids"],
           "examples": [f"my cat number {i} naps in the sun and purrs" for i in range(300)]}
# The Chroma writes of one label PUT, in order; a kill before each must leave the label wholly
# old (nothing begun) or wholly new (the journal's mark is there, and restart finishes it).
KILL_POINTS = {1: ("before the journal mark", "old"), 2: ("before the vectors", "new"),
               3: ("before the stale vectors go", "new"), 4: ("before the record", "new"),
               5: ("before the journal unmark", "new"), 6: ("before the catalog hash", "new")}


@pytest.fixture(scope="module")
def built_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini catalog indexed by a process that has exited (so the files are complete)."""
    db = tmp_path_factory.mktemp("killed-put") / "db"
    done = subprocess.run([sys.executable, "-c", "from eval.cli import main; main()", "index",
                           str(MINI_CATALOG), "--db", str(db)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **SERVE_ENV}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return db


SERVE_ENV = {"LABELRANK_EMBED_THREADS": "1", "LABELRANK_SELF_CALIBRATION_TEXTS": "0",
             "LABELRANK_CHROMA_HOST": "", "LABELRANK_LLM_BASE_URL": "", "OPENAI_BASE_URL": "",
             "LABELRANK_API_KEY": "", "LABELRANK_API_WRITE_KEY": ""}


def start_serve(db: Path, *prefix: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [*prefix, "serve", "--db", str(db), "--port", str(port)] if prefix else [
        "-c", "from eval.cli import main; main()", "serve", "--db", str(db), "--port", str(port)]
    process = subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, **SERVE_ENV})
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/readyz", process, timeout_s=180)
    return process, url


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", sorted(KILL_POINTS),
                         ids=[point for point, _ in KILL_POINTS.values()])
def test_kill_9_during_a_label_put_leaves_the_label_wholly_old_or_new(
        kill_at: int, built_db: Path, tmp_path: Path, embedder: Embedder) -> None:
    db = tmp_path / "db"
    shutil.copytree(built_db, db)
    old = load_catalog(MINI_CATALOG).labels["pets.cats"]
    new = Label(id="pets.cats", name=FELINES["name"], description=FELINES["description"],
                aliases=tuple(FELINES["aliases"]), parent="pets",
                examples=tuple(FELINES["examples"]))

    doomed, url = start_serve(db, "-m", "tests.crash_points", str(kill_at))
    with pytest.raises(httpx.TransportError):  # the server dies under the request
        httpx.put(f"{url}/v1/labels/pets.cats", json=FELINES, timeout=120)
    assert doomed.wait(30) == -signal.SIGKILL

    restarted, url = start_serve(db)
    try:
        served = httpx.get(f"{url}/v1/labels/pets.cats").json()
    finally:
        restarted.terminate()
        restarted.wait(30)

    expected = {"old": old, "new": new}[KILL_POINTS[kill_at][1]]
    index = LabelIndex(chroma_client(db), embedder)
    assert served["name"] == index.get("pets.cats").name == expected.name
    assert index.examples("pets.cats") == sorted(expected.examples)
    assert set(index._vector_ids_of(["pets.cats"])) == {
        vector_id("pets.cats", kind, text) for kind, text in label_texts(expected)}
    assert Journal(chroma_client(db), "labelrank").pending() == []
