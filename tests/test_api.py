"""The HTTP API against real parts: MiniLM, Chroma in a temp dir, uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from eval.cli import app as cli_app
from retrieval.catalog import load_catalog
from retrieval.embedder import Embedder
from retrieval.index import LabelIndex, chroma_client
from service.api.app import create_app
from service.api.microbatch import MicroBatcher
from service.locking import DirectoryBusyError
from service.results import ClassifyResult
from tests.conftest import MINI_CATALOG, api_settings, wait_ready
from tests.fake_openai import FakeOpenAI, Reply

RETRIEVAL = {"mode": "retrieval"}


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run the app with uvicorn on a free loopback port in a thread; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def top(answer: httpx.Response) -> str | None:
    assert answer.status_code == 200, answer.text
    labels = answer.json()["labels"]
    return labels[0]["id"] if labels else None


# -- classify ------------------------------------------------------------------


def test_classify_answers_the_cli_result(client: TestClient) -> None:
    answer = client.post("/v1/classify", json={"text": "my kitten keeps biting my fingers"})
    result = ClassifyResult.model_validate(answer.json())
    assert result.mode == "retrieval" and not result.degraded
    assert result.labels[0].id == "pets.cats" and len(result.candidates) == 5
    smaller = client.post("/v1/classify", json={"text": "my dog knocked my espresso cup off "
                                                "the table", "top_k": 2, "max_labels": 1})
    assert len(smaller.json()["candidates"]) == 2 and len(smaller.json()["labels"]) <= 1


def test_batch_keeps_order_and_isolates_bad_items(client: TestClient) -> None:
    items = [{"id": "a", "text": "best milk for a cappuccino"}, {"id": "b", "text": "  "},
             {"text": "x" * 30_000}, {"id": "d", "text": "filing my tax return late"}]
    answer = client.post("/v1/classify/batch", json={"items": items, **RETRIEVAL})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r.get("id") for r in results] == ["a", "b", None, "d"]
    assert results[0]["labels"][0]["id"] == "food.coffee"
    assert results[1]["error"]["code"] == "invalid_text"
    assert results[2]["error"]["code"] == "text_too_long"
    assert results[3]["labels"][0]["id"] == "money.taxes"


def test_batch_item_limit(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_batch_items=2)
    answer = client.post("/v1/classify/batch", json={"items": [{"text": "a"}] * 3})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "batch_too_large"
    assert client.post("/v1/classify/batch", json={"items": []}).json() == {"results": []}


def test_concurrent_single_requests_share_batches_over_real_http(
        tmp_path: Path, mini_index: LabelIndex, embedder: Embedder) -> None:
    settings = api_settings(tmp_path, microbatch_wait_ms=20)
    texts = ["my kitten keeps biting my fingers", "my sourdough bread did not rise",
             "when is the deadline to file my tax return", "best milk for a latte"] * 8
    with serve(create_app(settings, load_embedder=lambda: embedder)) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            wait_ready(http)

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                return await asyncio.gather(*(http.post("/v1/classify", json={"text": t})
                                              for t in texts))

        answers = asyncio.run(fire())
        with httpx.Client(base_url=url, timeout=30) as http:
            metrics = http.get("/metrics").text
    assert [top(a) for a in answers] == ["pets.cats", "food.baking", "money.taxes",
                                         "food.coffee"] * 8
    calls = _sample(metrics, "labelrank_pipeline_batch_size_count", source="single")
    assert calls < len(texts)  # fewer pipeline calls than requests: they were batched


def _sample(metrics: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text format, by name and labels."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name}{labels} not in metrics")


# -- labels --------------------------------------------------------------------


def test_label_lifecycle_while_classifying_over_real_http(
        tmp_path: Path, mini_index: LabelIndex, embedder: Embedder) -> None:
    text = "lava poured down the side of the erupting volcano"
    stop = threading.Event()
    statuses: list[int] = []

    def keep_classifying(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                statuses.append(http.post("/v1/classify", json={"text": text}).status_code)

    with serve(create_app(api_settings(tmp_path), load_embedder=lambda: embedder)) as url, \
            httpx.Client(base_url=url, timeout=30) as http, ThreadPoolExecutor(2) as pool:
        wait_ready(http)
        background = [pool.submit(keep_classifying, url) for _ in range(2)]
        assert top(http.post("/v1/classify", json={"text": text})) is None

        group = http.put("/v1/labels/geo", json={"name": "Geography", "assignable": False})
        assert group.status_code == 200 and group.json()["created"] is True
        volcano = {"name": "Volcanoes", "description": "Eruptions and lava.", "parent": "geo",
                   "examples": ["the volcano erupted and lava reached the village"]}
        assert http.put("/v1/labels/geo.volcanoes", json=volcano).status_code == 200
        assert top(http.post("/v1/classify", json={"text": text})) == "geo.volcanoes"

        patched = http.patch("/v1/labels/geo.volcanoes", json={
            "add_examples": ["ash clouds from the eruption grounded flights"],
            "add_aliases": ["eruptions"], "name": "Volcanoes and eruptions"})
        detail = http.get("/v1/labels/geo.volcanoes").json()
        assert patched.json()["label"] == detail
        assert detail["name"] == "Volcanoes and eruptions" and detail["aliases"] == ["eruptions"]
        assert len(detail["examples"]) == 2 and detail["parent"] == "geo"
        assert http.get("/v1/labels/geo").json()["children"] == ["geo.volcanoes"]
        ash = http.post("/v1/classify", json={"text": "ash clouds grounded flights"}).json()
        assert ash["labels"][0]["name"] == "Volcanoes and eruptions"

        page = http.get("/v1/labels", params={"prefix": "geo", "limit": 1}).json()
        assert [i["id"] for i in page["items"]] == ["geo"] and page["next_offset"] == 1
        assert page["total"] == 2
        roots = http.get("/v1/labels", params={"parent": ""}).json()["items"]
        assert [i["id"] for i in roots] == ["food", "geo", "money", "pets"]

        refused = http.delete("/v1/labels/geo")
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "label_has_children"
        deleted = http.delete("/v1/labels/geo", params={"cascade": "true"}).json()
        assert deleted["deleted"] == ["geo", "geo.volcanoes"] and deleted["vectors_removed"] > 0
        assert top(http.post("/v1/classify", json={"text": text})) is None
        gone = http.get("/v1/labels/geo.volcanoes")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_label"
        stop.set()
        for future in background:
            future.result()
    assert statuses and set(statuses) == {200}


def test_label_writes_are_validated(client: TestClient) -> None:
    def code(answer: httpx.Response) -> tuple[int, str]:
        return answer.status_code, answer.json()["error"]["code"]

    assert code(client.put("/v1/labels/x", json={"name": "X", "parent": "nope"})) == (
        422, "invalid_label")
    assert code(client.patch("/v1/labels/pets", json={"parent": "pets.dogs"})) == (
        422, "invalid_label")  # a cycle
    assert code(client.put("/v1/labels/x", json={"name": " "})) == (422, "invalid_request")
    assert code(client.put("/v1/labels/x", json={"name": "X", "colour": 1})) == (
        422, "invalid_request")
    assert code(client.patch("/v1/labels/nope", json={"name": "N"})) == (404, "unknown_label")
    assert code(client.delete("/v1/labels/nope")) == (404, "unknown_label")
    assert code(client.get("/v1/labels/%20bad")) == (422, "invalid_request")
    assert client.get("/v1/labels/pets.cats").json()["name"] == "Cats"


def test_get_then_put_of_the_same_json_changes_nothing(client: TestClient) -> None:
    for label_id in ("pets", "pets.cats"):  # a parent (children) and a child (path)
        before = client.get(f"/v1/labels/{label_id}").json()
        assert before["children"] or before["path"]
        written = client.put(f"/v1/labels/{label_id}", json=before)
        assert written.status_code == 200, written.text
        assert written.json()["vectors_added"] == written.json()["vectors_removed"] == 0
        assert client.get(f"/v1/labels/{label_id}").json() == before

    line = json.loads(MINI_CATALOG.read_text().splitlines()[1])  # a catalog line, id and all
    assert client.put(f"/v1/labels/{line['id']}", json=line).status_code == 200
    other = client.put("/v1/labels/pets.cats", json={**line, "id": "pets.dogs"})
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "invalid_label"
    assert "'pets.dogs' differs from the URL's 'pets.cats'" in other.json()["error"]["message"]


def test_feedback_changes_a_later_answer(tmp_path: Path, client: TestClient) -> None:
    text = "my hamster escaped from its cage"
    assert client.put("/v1/labels/pets.exotic",
                      json={"name": "Exotic pets", "parent": "pets"}).status_code == 200
    before = client.post("/v1/classify", json={"text": text}).json()
    assert "pets.exotic" not in [lab["id"] for lab in before["labels"]]

    answer = client.post("/v1/feedback", json={"text": text, "labels": ["pets.exotic"],
                                               "rejected": ["pets.dogs"]})
    assert answer.json() == {"confirmed": ["pets.exotic"], "rejected": ["pets.dogs"],
                             "examples_added": 1, "examples_removed": 0}
    assert top(client.post("/v1/classify", json={"text": text})) == "pets.exotic"
    assert text in client.get("/v1/labels/pets.exotic").json()["examples"]
    log = [json.loads(line) for line in (tmp_path / "db" / "feedback.jsonl").read_text()
           .splitlines()]
    assert log[-1]["rejected"] == ["pets.dogs"] and log[-1]["text"] == text
    again = client.post("/v1/feedback", json={"text": text, "labels": ["pets.exotic"]})
    assert again.json()["examples_added"] == 0  # already an example: nothing written

    undo = client.post("/v1/feedback", json={"text": text, "rejected": ["pets.exotic"]})
    assert undo.json()["examples_removed"] == 1
    assert text not in client.get("/v1/labels/pets.exotic").json()["examples"]
    both = client.post("/v1/feedback", json={"text": text, "labels": ["pets.cats"],
                                             "rejected": ["pets.cats"]})
    assert both.status_code == 422
    unknown = client.post("/v1/feedback", json={"text": text, "labels": ["nope"]})
    assert unknown.status_code == 404


# -- auth, limits, readiness, metrics ------------------------------------------


def test_auth_with_read_and_write_keys(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="read-key", api_write_key="write-key")
    read, write = ({"Authorization": f"Bearer {k}"} for k in ("read-key", "write-key"))
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    anonymous = client.post("/v1/classify", json={"text": "my cat"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    wrong = client.post("/v1/classify", json={"text": "my cat"},
                        headers={"Authorization": "Bearer read-kez"})
    assert wrong.status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=read).status_code == 200
    for headers in (read, write):
        assert client.post("/v1/classify", json={"text": "my cat"}, headers=headers).is_success
    label = {"name": "Birds", "parent": "pets"}
    forbidden = client.put("/v1/labels/pets.birds", json=label, headers=read)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    assert client.put("/v1/labels/pets.birds", json=label, headers=write).status_code == 200


def test_one_key_guards_reads_and_writes(make_client: Callable[..., TestClient]) -> None:
    guarded = make_client(api_key="k")
    assert guarded.delete("/v1/labels/pets.cats").status_code == 401
    assert guarded.get("/v1/labels").status_code == 401
    assert guarded.delete("/v1/labels/pets.cats",
                          headers={"Authorization": "Bearer k"}).status_code == 200


def test_limits(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_body_bytes=4096, max_text_chars=1000)

    def code(answer: httpx.Response) -> tuple[int, str]:
        return answer.status_code, answer.json()["error"]["code"]

    huge = json.dumps({"text": "word " * 2000}).encode()
    assert code(client.post("/v1/classify", content=huge,
                            headers={"Content-Type": "application/json"})) == (
        413, "payload_too_large")
    assert code(client.post("/v1/classify", content=iter([huge[:3000], huge[3000:]]),
                            headers={"Content-Type": "application/json"})) == (
        413, "payload_too_large")  # streamed without Content-Length: cut off while reading
    assert code(client.post("/v1/classify", json={"text": "a" * 1001})) == (413, "text_too_long")
    assert code(client.post("/v1/classify", json={"text": ""})) == (422, "invalid_text")
    assert code(client.post("/v1/classify", json={"text": "x", "top_k": 0})) == (
        422, "invalid_request")
    assert code(client.post("/v1/classify", content=b"{not json",
                            headers={"Content-Type": "application/json"})) == (
        422, "invalid_request")
    assert code(client.post("/v1/classify", json={"text": "x", "mode": "llm"})) == (
        400, "llm_not_configured")


def test_readiness_before_and_after_load(tmp_path: Path, embedder: Embedder) -> None:
    release = threading.Event()

    def slow_embedder() -> Embedder:
        release.wait(30)
        return embedder

    app = create_app(api_settings(tmp_path), load_embedder=slow_embedder)
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
        loading = client.get("/readyz")
        assert loading.status_code == 503
        assert loading.json()["error"]["checks"]["embedder"] is False
        assert client.post("/v1/classify", json={"text": "hi"}).status_code == 503
        release.set()
        deadline = time.monotonic() + 30
        while (answer := client.get("/readyz")).json()["error"]["checks"]["index"] is False:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert answer.status_code == 503  # loaded, but the new index holds no labels
        assert answer.json()["error"]["message"] == "the index has no labels"
        assert client.post("/v1/classify", json={"text": "hi"}).json()["error"]["code"] == (
            "empty_index")
        assert client.put("/v1/labels/a", json={"name": "Apples"}).status_code == 200
        assert wait_ready(client)["checks"]["labels"] == 1


def test_embedded_directory_has_one_serving_process(make_client: Callable[..., TestClient],
                                                    tmp_path: Path, embedder: Embedder) -> None:
    make_client()
    second = create_app(api_settings(tmp_path), load_embedder=lambda: embedder)
    with pytest.raises(DirectoryBusyError, match="already served by another process"), \
            TestClient(second):
        pass
    refused = CliRunner().invoke(cli_app, ["serve", "--workers", "2", "--db", str(tmp_path)],
                                 env={"LABELRANK_CHROMA_HOST": ""})
    assert refused.exit_code != 0 and "one writer process" in refused.output


def test_metrics_count_requests_results_and_llm_use(
        tmp_path: Path, mini_index: LabelIndex, embedder: Embedder, fake_llm: FakeOpenAI) -> None:
    settings = api_settings(tmp_path, llm_base_url=fake_llm.base_url, llm_api_key="test",
                            llm_model="fake-model", llm_max_attempts=2, llm_max_wait_s=0.01,
                            llm_timeout_s=2.0)
    fake_llm.enqueue(Reply.labels("C01", usage=(120, 7)), Reply.error(500), Reply.error(500))
    with TestClient(create_app(settings, load_embedder=lambda: embedder)) as client:
        wait_ready(client)
        chosen = client.post("/v1/classify", json={"text": "my kitten bites"}).json()
        assert chosen["mode"] == "llm" and chosen["labels"][0]["id"] == "pets.cats"
        degraded = client.post("/v1/classify", json={"text": "my kitten bites"}).json()
        assert degraded["degraded"] and degraded["reason"].startswith("llm_failed")
        client.get("/v1/labels/nope")
        text = client.get("/metrics").text
    def sample(name: str, **labels: str) -> float:
        return _sample(text, f"labelrank_{name}", **labels)

    assert sample("http_requests_total", method="POST", route="/v1/classify", status="200") == 2
    assert sample("http_requests_total", method="GET", route="/v1/labels/{label_id:path}",
                  status="404") == 1
    assert sample("http_request_duration_seconds_count", method="POST",
                  route="/v1/classify") == 2
    assert sample("llm_calls_total") == 3
    assert sample("llm_tokens_total", kind="prompt") == 120
    assert sample("llm_tokens_total", kind="completion") == 7
    assert sample("results_total", mode="retrieval", degraded="true") == 1
    assert sample("results_total", mode="llm", degraded="false") == 1
    assert sample("degraded_results_total", reason="llm_failed: server_error") == 1
    assert sample("labels") == 9


def test_workers_share_a_chroma_server(tmp_path: Path, embedder: Embedder,
                                       chroma_server: tuple[str, int]) -> None:
    host, port = chroma_server
    LabelIndex(chroma_client(host=host, port=port), embedder).sync(load_catalog(MINI_CATALOG))
    settings = api_settings(tmp_path, chroma_host=host, chroma_port=port, index_refresh_s=0)
    text = "lava poured down the side of the erupting volcano"
    volcano = {"name": "Volcanoes", "examples": ["the volcano erupted and lava flowed"]}
    with serve(create_app(settings, load_embedder=lambda: embedder)) as url, \
            httpx.Client(base_url=url, timeout=30) as one, \
            TestClient(create_app(settings, load_embedder=lambda: embedder)) as two:
        assert wait_ready(one)["checks"]["labels"] == wait_ready(two)["checks"]["labels"] == 9
        assert top(one.post("/v1/classify", json={"text": "my kitten bites"})) == "pets.cats"
        assert top(two.post("/v1/classify", json={"text": text})) is None
        assert one.put("/v1/labels/geo.volcanoes", json=volcano).status_code == 200
        assert top(two.post("/v1/classify", json={"text": text})) == "geo.volcanoes"
        assert two.delete("/v1/labels/geo.volcanoes").status_code == 200
        assert top(one.post("/v1/classify", json={"text": text})) is None
    assert not (tmp_path / "db").exists()  # nothing embedded was opened


def test_llm_requests_overlap_instead_of_queueing(
        tmp_path: Path, mini_index: LabelIndex, embedder: Embedder, fake_llm: FakeOpenAI) -> None:
    arrivals: list[float] = []

    def slow_answer(payload: dict) -> Reply:
        arrivals.append(time.monotonic())
        return Reply.labels("C01", delay_s=1.5)

    fake_llm.default = slow_answer
    settings = api_settings(tmp_path, llm_base_url=fake_llm.base_url, llm_api_key="test",
                            llm_model="fake-model", llm_timeout_s=10.0)
    with serve(create_app(settings, load_embedder=lambda: embedder)) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            wait_ready(http)

        async def one(http: httpx.AsyncClient, i: int) -> httpx.Response:
            await asyncio.sleep(0.4 * (i // 3))  # a second wave while the first one waits
            return await http.post("/v1/classify", json={"text": f"my kitten bites {i}"})

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                return await asyncio.gather(*(one(http, i) for i in range(6)))

        answers = asyncio.run(fire())
    assert all(a.json()["mode"] == "llm" for a in answers)
    assert len(arrivals) == 6
    assert max(arrivals) - min(arrivals) < 1.5  # the second wave did not wait for the first


def test_openapi_documents_every_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/classify/batch", "/v1/labels", "/v1/labels/{label_id}",
            "/v1/feedback", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    classify = schema["paths"]["/v1/classify"]["post"]
    assert classify["description"].startswith("Classify one text")
    assert client.get("/docs").status_code == 200


# -- micro-batcher ---------------------------------------------------------------


def test_microbatcher_groups_by_key_keeps_order_and_shares_failures() -> None:
    calls: list[tuple[list[str], str]] = []

    def run(texts: list[str], key: str) -> list[str]:
        calls.append((list(texts), key))
        if key == "bad":
            raise ValueError("boom")
        return [f"{key}:{t}" for t in texts]

    async def scenario() -> list[object]:
        batcher: MicroBatcher[str, str] = MicroBatcher(run, max_size=3, max_wait_s=0.05)
        batcher.start()
        jobs = [batcher.submit(t, k) for t, k in
                [("a", "x"), ("b", "y"), ("c", "x"), ("d", "bad"), ("e", "x"), ("f", "x")]]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes[:3] == ["x:a", "y:b", "x:c"] and outcomes[4:] == ["x:e", "x:f"]
    assert isinstance(outcomes[3], ValueError)
    assert all(len(texts) <= 3 for texts, _ in calls)
    assert (["a", "c"], "x") in calls  # same key, same batch
