"""Security defaults: no CORS unless configured, keys never in logs or answers, no stack traces."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from retrieval.embedder import Embedder
from retrieval.index import LabelIndex
from service.api.app import create_app
from tests.conftest import make_settings
from tests.fake_openai import FakeOpenAI, Reply
from tests.test_api import wait_ready

API_KEY = "api-key-SECRET-4f9d2c7a1b"
LLM_KEY = "llm-key-SECRET-8e3b6a0d5c"


def test_cors_is_off_by_default(tmp_path: Path, readonly_db: Path, readonly_index: LabelIndex,
                                embedder: Embedder) -> None:
    settings = make_settings(tmp_path, db=readonly_db)
    with TestClient(create_app(settings, load_embedder=lambda: embedder)) as client:
        wait_ready(client)
        origin = {"Origin": "https://evil.example"}
        preflight = client.options("/v1/classify", headers={
            **origin, "Access-Control-Request-Method": "POST"})
        simple = client.post("/v1/classify", json={"text": "my cat"}, headers=origin)
    for answer in (preflight, simple):
        assert not any(h.lower().startswith("access-control-") for h in answer.headers)


def test_keys_never_reach_logs_or_answers(tmp_path: Path, readonly_db: Path,
                                          readonly_index: LabelIndex, embedder: Embedder,
                                          fake_llm: FakeOpenAI,
                                          caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, db=readonly_db, api_key=API_KEY, llm_api_key=LLM_KEY,
                             llm_base_url=fake_llm.base_url, llm_max_attempts=1)
    fake_llm.default = Reply.error(401, message="Incorrect API key provided")
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    with TestClient(create_app(settings, load_embedder=lambda: embedder)) as client:
        wait_ready(client)
        for key in (API_KEY, API_KEY[:-1], "wrong"):
            answer = client.post("/v1/classify", json={"text": "my cat"},
                                 headers={"Authorization": f"Bearer {key}"})
            bodies.append(answer.text)
        assert client.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
                          ).status_code == 200
        bodies.append(client.get("/readyz").text)
    assert fake_llm.requests  # the LLM was called with the key ...
    everything = caplog.text + "".join(bodies)
    for secret in (API_KEY, LLM_KEY, API_KEY[:-1]):
        assert secret not in everything  # ... which appears in no log line and no answer
    assert "Traceback" not in everything
