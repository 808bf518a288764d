"""Shared fixtures: the real MiniLM embedder, real Chroma in a temp dir, a fake LLM over HTTP."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from retrieval.catalog import load_catalog
from retrieval.embedder import Embedder, SentenceTransformerEmbedder
from retrieval.index import LabelIndex, chroma_client
from service.api.app import create_app
from service.factory import build_pipeline
from service.pipeline import Pipeline
from service.settings import Settings
from tests.fake_openai import FakeOpenAI

DATA = Path(__file__).parent / "data"
MINI_CATALOG = DATA / "mini_catalog.jsonl"


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The real all-MiniLM-L6-v2, loaded once per test session."""
    return SentenceTransformerEmbedder()


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings isolated from the developer's env and .env."""
    base = {"db": tmp_path / "db", "llm_base_url": None, "llm_api_key": None}
    return Settings(_env_file=None, **{**base, **overrides})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def mini_index(settings: Settings, embedder: SentenceTransformerEmbedder) -> LabelIndex:
    """A real Chroma index of the mini catalog in a temp dir."""
    index = LabelIndex(chroma_client(settings.db), embedder, name=settings.collection)
    index.sync(load_catalog(MINI_CATALOG))
    return index


@pytest.fixture(scope="session")
def readonly_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of `readonly_index`."""
    return tmp_path_factory.mktemp("readonly") / "db"


@pytest.fixture(scope="session")
def readonly_index(readonly_db: Path, embedder: SentenceTransformerEmbedder) -> LabelIndex:
    """The mini catalog indexed once per session, for tests that never write to it."""
    index = LabelIndex(chroma_client(readonly_db), embedder)
    index.sync(load_catalog(MINI_CATALOG))
    return index


@pytest.fixture
def fake_llm() -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server on loopback."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def llm_pipeline(tmp_path: Path, mini_index: LabelIndex, fake_llm: FakeOpenAI) -> Pipeline:
    """The real pipeline wired to the fake LLM with fast retries."""
    settings = make_settings(tmp_path, llm_base_url=fake_llm.base_url, llm_api_key="test",
                             llm_model="fake-model", llm_max_attempts=3, llm_max_wait_s=0.05,
                             llm_timeout_s=2.0, top_k=5, threshold=0.3)
    return build_pipeline(settings, index=mini_index)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    """Poll `url` until it answers 2xx; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).is_success:
                return
        assert process.poll() is None, f"{process.args[0]} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{url} did not answer in {timeout_s} s"
        time.sleep(0.1)


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real `chroma run` on a free loopback port."""
    port = free_port()
    chroma = Path(sys.executable).parent / "chroma"
    process = subprocess.Popen([str(chroma), "run", "--path", str(tmp_path / "chroma"),
                                "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/v2/heartbeat", process, timeout_s=30)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(timeout=10)


def api_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings tuned for the mini catalog (as in test_pipeline.py)."""
    return make_settings(tmp_path, top_k=5, threshold=0.35, relative_threshold=0.3,
                         **overrides)


def wait_ready(client: TestClient | httpx.Client, timeout: float = 60) -> dict:
    """Poll /readyz until 200."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get("/readyz")
        if answer.status_code == 200 or time.monotonic() > deadline:
            assert answer.status_code == 200, answer.text
            return answer.json()
        time.sleep(0.05)


@pytest.fixture
def make_client(tmp_path: Path, mini_index: LabelIndex,
                embedder: Embedder) -> Iterator[Callable[..., TestClient]]:
    """Builds in-process clients over the mini index; settings overrides as keywords."""
    clients: list[TestClient] = []

    def make(extra_routers: Sequence[APIRouter] = (), **overrides: object) -> TestClient:
        app = create_app(api_settings(tmp_path, **overrides), load_embedder=lambda: embedder,
                         extra_routers=extra_routers)
        client = TestClient(app).__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)
