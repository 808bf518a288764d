"""The result contract on the wire, pinned per front end: the classify CLI line, the API's
answers, a batch file's records and an eval run's rows, each compared with the JSON it gave when
this test was written (tests/data/wire_contract.json): keys and their order, every value and
its JSON type, the text's separators and escaping; scores within 1e-4, latencies only as numbers.

Set LABELRANK_WRITE_WIRE=1 to write that file again, for a contract change made on purpose.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from eval.cli import app as cli_app
from eval.datasets import load_dataset
from eval.run import EvalConfig, run_eval
from retrieval.catalog import load_catalog
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.index import LabelIndex, chroma_client
from service.batch.run import BatchOptions, run_batch
from service.engine import open_engine
from service.results import SCORE_DIGITS, rounded
from tests.conftest import DATA, MINI_CATALOG, api_settings, make_settings, wait_ready
from tests.fake_openai import FakeOpenAI, Reply

GOLDEN = DATA / "wire_contract.json"
# A label with a non-ASCII name, below a taxonomy root: escaping and paths are part of the wire.
CREME = {"id": "food.creme", "name": "Crème brûlée", "parent": "food",
         "description": "Custard desserts with a burnt sugar top.",
         "examples": ["caramelising the sugar on a custard with a blowtorch"]}
TEXTS = ["my cat scratches everything", "how do I caramelise a crème brûlée",
         "the eigenvalues of a symmetric matrix are real", "   "]
LLM_TEXTS = ["my puppy chews the sofa", "when are my taxes due"]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
TOLERANCE = 1e-4
VOLATILE = {"latency_ms"}  # wall-clock time: only its JSON type is pinned


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> Path:
    root = tmp_path_factory.mktemp("wire")
    catalog = root / "catalog.jsonl"
    catalog.write_text(MINI_CATALOG.read_text() + json.dumps(CREME, ensure_ascii=False) + "\n")
    LabelIndex(chroma_client(root / "db"), embedder).sync(load_catalog(catalog))
    return root / "db"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """Chooses the first candidate and an id that is none (dropped); fails on the last LLM
    text (503 every time: degraded)."""
    with FakeOpenAI() as server:
        server.default = lambda request: (
            Reply.error(503) if LLM_TEXTS[-1] in json.dumps(request["messages"])
            else Reply.labels("C01", "C99", usage=(120, 7)))
        yield server


def llm_overrides(fake: FakeOpenAI) -> dict[str, object]:
    return {"llm_base_url": fake.base_url, "llm_api_key": "test", "llm_model": "fake-model",
            "llm_max_attempts": 2, "llm_max_wait_s": 0.01, "llm_timeout_s": 2.0}


def front_cli(tmp_path: Path, db: Path, embedder: SentenceTransformerEmbedder,
              fake: FakeOpenAI) -> tuple[str, list]:
    unset: dict[str, str | None] = {k: None for k in os.environ
                                    if k.startswith(("LABELRANK_", "OPENAI_"))}
    done = CliRunner().invoke(cli_app, ["classify", *TEXTS, "--db", str(db), "--top-k", "5"],
                              env=unset)
    assert done.exit_code == 1, done.stderr  # the blank text fails, and only it
    return done.stdout, [json.loads(line) for line in done.stdout.splitlines()]


def front_api(tmp_path: Path, db: Path, embedder: SentenceTransformerEmbedder,
              fake: FakeOpenAI) -> tuple[str, list]:
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    texts, records = [], []
    for overrides, mode in [({}, "retrieval"), (llm_overrides(fake), "llm")]:
        settings = api_settings(tmp_path, db=db, **overrides)
        with TestClient(create_app(settings, load_embedder=lambda: embedder)) as client:
            wait_ready(client)
            answers = [client.post("/v1/classify", json={"text": text, "mode": mode})
                       for text in (TEXTS[:3] if mode == "retrieval" else LLM_TEXTS)]
            items = [{"id": f"t{i}", "text": text} for i, text in enumerate(TEXTS)]
            answers.append(client.post("/v1/classify/batch", json={"items": items, "mode": mode}))
        texts += [answer.text for answer in answers]
        records += [answer.json() for answer in answers]
    return "\n".join(texts), records


def front_batch(tmp_path: Path, db: Path, embedder: SentenceTransformerEmbedder,
                fake: FakeOpenAI) -> tuple[str, list]:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"t{i}", "text": text}) + "\n"
                              for i, text in enumerate(TEXTS + LLM_TEXTS)))
    texts = []
    for overrides, mode in [({}, "retrieval"), (llm_overrides(fake), "llm")]:
        settings = make_settings(tmp_path, db=db, top_k=5, **overrides)
        index = LabelIndex(chroma_client(db), embedder)
        output = tmp_path / f"out-{mode}.jsonl"
        run_batch(open_engine(settings, index), str(source), output, BatchOptions(mode=mode))
        texts.append(output.read_text())
    return "".join(texts), [json.loads(line) for text in texts for line in text.splitlines()]


def front_eval(tmp_path: Path, db: Path, embedder: SentenceTransformerEmbedder,
               fake: FakeOpenAI) -> tuple[str, list]:
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"id": f"t{i}", "text": text, "labels": ["pets.cats"]},
                                       ensure_ascii=False) + "\n"
                            for i, text in enumerate(TEXTS[:3] + LLM_TEXTS)))
    rows = []
    for overrides, mode in [({}, "retrieval"), (llm_overrides(fake), "llm")]:
        settings = make_settings(tmp_path, db=db, top_k=5, **overrides)
        engine = open_engine(settings, LabelIndex(chroma_client(db), embedder))
        run = run_eval(engine, load_dataset(gold), EvalConfig(mode=mode, cache_dir=None,
                                                              out_dir=tmp_path / "runs"))
        rows += run["predictions"]
    return json.dumps(rows, ensure_ascii=False, indent=1), rows


FRONTS = {"cli": front_cli, "api": front_api, "batch": front_batch, "eval": front_eval}


def same_wire(actual: object, expected: object, where: str = "$") -> None:
    """Equal JSON, key order and types included; floats within TOLERANCE."""
    assert type(actual) is type(expected), f"{where}: {actual!r} is not like {expected!r}"
    if isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for key, value in expected.items():
            if key not in VOLATILE:
                same_wire(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: length"
        for i, (got, want) in enumerate(zip(actual, expected, strict=True)):
            same_wire(got, want, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert abs(actual - expected) <= TOLERANCE, f"{where}: {actual} != {expected}"
    elif isinstance(expected, str):  # a reason quotes rounded scores: the same tolerance
        assert isinstance(actual, str) and NUMBER.sub("#", actual) == NUMBER.sub("#", expected), \
            f"{where}: {actual!r} != {expected!r}"
        for got, want in zip(NUMBER.findall(actual), NUMBER.findall(expected), strict=True):
            assert abs(float(got) - float(want)) <= 2e-3, f"{where}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("front", list(FRONTS))
def test_wire_json_is_unchanged(front: str, tmp_path: Path, db: Path,
                                embedder: SentenceTransformerEmbedder, fake: FakeOpenAI) -> None:
    text, records = FRONTS[front](tmp_path, db, embedder, fake)
    shape = NUMBER.sub("#", text)  # separators, key order, escaping: all but the digits
    if os.environ.get("LABELRANK_WRITE_WIRE"):
        pinned = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        pinned[front] = {"shape": shape, "records": records}
        GOLDEN.write_text(json.dumps(pinned, ensure_ascii=False, indent=1) + "\n")
        pytest.skip(f"wrote the {front} contract to {GOLDEN}")
    pinned = json.loads(GOLDEN.read_text())[front]
    same_wire(records, pinned["records"])
    assert shape == pinned["shape"]


def test_rounded_gives_pythons_round_exactly() -> None:
    rng = np.random.default_rng(0)
    halves = (np.arange(-2000, 2000) + 0.5) / 10**SCORE_DIGITS  # ties, near ties after scaling
    values = np.concatenate([rng.normal(0, 1, 20_000), rng.uniform(-1, 1, 20_000) * 1e-6,
                             halves, np.nextafter(halves, 0), np.nextafter(halves, 1),
                             [0.0, -0.0, 1e300, -1e300, np.inf, -np.inf, 5e-324]])
    got = rounded(values)
    want = [round(float(v), SCORE_DIGITS) for v in values]
    assert [repr(g) for g in got] == [repr(w) for w in want]  # repr: -0.0 and 0.0 differ
