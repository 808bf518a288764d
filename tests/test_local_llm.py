"""LLM mode against a real engine: llama.cpp's server with the packaged Gemma 3 270M model.

Asserts the contract (valid JSON, only candidate ids, usage, latency, constrained decoding),
never that a 270M base model chooses well. Run with `make test-llm`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from prompts.local_llm import MODEL_ALIAS, LocalLLMServer
from retrieval.index import LabelIndex
from service.factory import build_pipeline
from service.pipeline import ClassifyOptions
from service.results import ClassifyResult
from tests.conftest import make_settings

pytestmark = pytest.mark.llm

TEXTS = ["my kitten keeps biting my fingers", "when do I have to file my tax return",
         "the eigenvalues of a symmetric matrix are real"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLLMServer]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed: run make test-llm")
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with LocalLLMServer(log=log) as running:
        yield running


def test_llm_mode_keeps_the_contract_with_a_real_engine(tmp_path: Path, server: LocalLLMServer,
                                                        mini_index: LabelIndex) -> None:
    settings = make_settings(tmp_path, llm_base_url=server.base_url, llm_api_key="local",
                             llm_model=MODEL_ALIAS, top_k=5, max_labels=2, llm_timeout_s=180,
                             llm_max_answer_tokens=64, llm_concurrency=1)
    pipeline = build_pipeline(settings, index=mini_index)
    sent: list[dict] = []
    pipeline.selector.client = pipeline.selector.client.with_options(http_client=httpx.Client(
        event_hooks={"request": [lambda request: sent.append(json.loads(request.content))]}))

    outcomes = pipeline.classify_batch(TEXTS, ClassifyOptions(mode="llm"))

    for outcome in outcomes:
        assert isinstance(outcome, ClassifyResult)
        assert outcome.mode == "llm" and not outcome.degraded, outcome.reason
        assert {lab.id for lab in outcome.labels} <= {c.id for c in outcome.candidates}
        assert len(outcome.labels) <= 2 and outcome.dropped_ids == []
        assert outcome.usage.prompt_tokens > 0 and outcome.usage.completion_tokens > 0
        assert outcome.latency_ms > 0
    # The request log: auto tried OpenAI's json_schema, llama.cpp refused it, and every later
    # request carried the slot enum (with the label limit) that llama.cpp compiles to a grammar.
    assert sent[0]["response_format"]["type"] == "json_schema"
    constrained = [body for body in sent if body["response_format"]["type"] == "json_object"]
    assert len(constrained) == len(TEXTS)
    items = constrained[0]["response_format"]["schema"]["properties"]["labels"]
    assert items["maxItems"] == 2 and items["items"]["enum"][:5] == [f"C0{i}" for i in range(1, 6)]


def test_constrained_decoding_is_in_effect(tmp_path: Path, server: LocalLLMServer,
                                           mini_index: LabelIndex) -> None:
    settings = make_settings(tmp_path, llm_base_url=server.base_url, llm_api_key="local",
                             llm_model=MODEL_ALIAS, top_k=5, llm_response_format="json_object",
                             llm_max_answer_tokens=64, llm_timeout_s=180)
    pipeline = build_pipeline(settings, index=mini_index)
    selector = pipeline.selector
    for text, shortlist in zip(TEXTS, pipeline.retriever.candidates(TEXTS, 5), strict=True):
        rendered = selector.prompt(text, pipeline.prompt_candidates(shortlist), 2)
        answer = selector.client.chat.completions.create(**selector.request(rendered))
        content = json.loads(answer.choices[0].message.content)  # always parseable JSON
        assert set(content) == {"labels"} and len(content["labels"]) <= 2
        assert set(content["labels"]) <= set(rendered.slots)
