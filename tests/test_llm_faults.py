"""Every LLM fault over real HTTP: the answer is correct or says it is degraded, retries follow
the policy (counted at the fake server), a batch accounts for every item, and the circuit
breaker stops calling an endpoint that keeps failing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from prompts.breaker import CircuitBreaker
from prompts.deadline import DeadlineTransport
from retrieval.embedder import Embedder
from retrieval.index import LabelIndex
from service.api.app import create_app
from service.factory import build_pipeline
from service.pipeline import ClassifyOptions, Pipeline
from service.results import ClassifyResult, ItemError
from tests.conftest import make_settings
from tests.fake_openai import FakeOpenAI, Reply, faults, like_llama_cpp, with_faults
from tests.test_api import _sample, wait_ready
from tests.test_llm_selection import slot_of

LLM = ClassifyOptions(mode="llm")
TEXT = "my kitten keeps biting my fingers"
ATTEMPTS = 3
TIMEOUT_S = 0.4

# fault -> (requests the fake must see for one text, degraded reason or None)
EXPECTED: dict[str, tuple[int, str | None]] = {
    "429_retry_after": (ATTEMPTS, "llm_failed: rate_limited"),
    "429": (ATTEMPTS, "llm_failed: rate_limited"),
    "500": (ATTEMPTS, "llm_failed: server_error"),
    "502": (ATTEMPTS, "llm_failed: server_error"),
    "503": (ATTEMPTS, "llm_failed: server_error"),
    "hang": (ATTEMPTS, "llm_failed: timeout"),
    "slow_stream": (ATTEMPTS, "llm_failed: timeout"),
    "slow_headers": (ATTEMPTS, "llm_failed: timeout"),
    "disconnect": (ATTEMPTS, "llm_failed: connection_error"),
    "invalid_json": (1, "llm_failed: invalid_answer"),
    "schema_violation": (1, "llm_failed: invalid_answer"),
    "empty_choice": (1, "llm_failed: invalid_answer"),
    "ids_outside": (1, None),
    "duplicate_ids": (1, None),
    "too_many": (1, None),
}


def fault_pipeline(tmp_path: Path, index: LabelIndex, fake: FakeOpenAI, **overrides: object
                   ) -> Pipeline:
    """The real pipeline on the fake LLM: 3 attempts, short waits, a short timeout."""
    policy = {"llm_max_attempts": ATTEMPTS, "llm_max_wait_s": 0.02, "llm_timeout_s": TIMEOUT_S}
    settings = make_settings(tmp_path, llm_base_url=fake.base_url, llm_api_key="test",
                             llm_model="fake-model", top_k=5, threshold=0.3, max_labels=3,
                             **{**policy, **overrides})
    return build_pipeline(settings, index=index)


@pytest.fixture
def no_breaker(tmp_path: Path, readonly_index: LabelIndex, fake_llm: FakeOpenAI) -> Pipeline:
    return fault_pipeline(tmp_path, readonly_index, fake_llm, llm_breaker_failures=0)


def assert_sound(result: ClassifyResult, max_labels: int = 3) -> None:
    """Labels come from the candidates, at most max_labels, each once; degraded says why."""
    ids = [lab.id for lab in result.labels]
    assert set(ids) <= {c.id for c in result.candidates}
    assert len(ids) == len(set(ids)) <= max_labels
    if result.degraded:
        assert result.mode == "retrieval" and (result.reason or "").startswith("llm_failed: ")


def test_the_fault_table_covers_every_scripted_fault() -> None:
    assert set(EXPECTED) == set(faults())


@pytest.mark.parametrize("fault", sorted(EXPECTED))
def test_each_fault_is_correct_or_degraded_with_counted_retries(
        fault: str, no_breaker: Pipeline, fake_llm: FakeOpenAI) -> None:
    fake_llm.default = faults(hang_s=3 * TIMEOUT_S)[fault]
    started = time.perf_counter()
    result = no_breaker.classify(TEXT, LLM)
    requests, reason = EXPECTED[fault]
    assert fake_llm.request_count == requests
    assert result.llm_attempts == requests
    assert result.reason == reason if reason else not result.degraded
    assert_sound(result)
    if reason:  # the threshold still answers: degraded is not empty
        assert result.labels and result.labels[0].id == "pets.cats"
    # A hang or a trickle costs at most the timeout per attempt (plus scheduling slack).
    assert time.perf_counter() - started < ATTEMPTS * (TIMEOUT_S + 0.5)


def test_model_answers_are_validated(no_breaker: Pipeline, fake_llm: FakeOpenAI) -> None:
    fake_llm.default = faults()["ids_outside"]
    result = no_breaker.classify(TEXT, LLM)
    assert result.labels == [] and result.dropped_ids == ["C99", "X1", "not.a.label"]
    fake_llm.default = faults()["duplicate_ids"]
    assert [lab.id for lab in no_breaker.classify(TEXT, LLM).labels] == [
        no_breaker.classify(TEXT, ClassifyOptions(mode="retrieval")).candidates[0].id]
    fake_llm.default = faults()["too_many"]
    result = no_breaker.classify(TEXT, LLM)
    assert len(result.labels) == 3 and len(result.dropped_ids) == 49 - 3


@pytest.mark.parametrize("fault", ["429_retry_after", "429", "503", "disconnect", "hang",
                                   "slow_stream", "slow_headers"])
def test_one_transient_fault_is_retried_to_a_full_answer(
        fault: str, no_breaker: Pipeline, fake_llm: FakeOpenAI) -> None:
    fake_llm.enqueue(faults(hang_s=3 * TIMEOUT_S)[fault])
    fake_llm.default = lambda req: Reply.labels(slot_of(req, "Cats"))
    result = no_breaker.classify(TEXT, LLM)
    assert fake_llm.request_count == 2 and result.llm_attempts == 2
    assert [lab.id for lab in result.labels] == ["pets.cats"] and not result.degraded


def test_a_batch_under_random_faults_accounts_for_every_item(
        tmp_path: Path, readonly_index: LabelIndex, fake_llm: FakeOpenAI) -> None:
    pipeline = fault_pipeline(tmp_path, readonly_index, fake_llm, llm_breaker_failures=0)
    fake_llm.default = with_faults(lambda req: Reply.labels(slot_of(req, "Cats")), rate=0.5,
                                   seed=7, hang_s=3 * TIMEOUT_S)
    texts = [f"my cat number {i} is sick" for i in range(24)]
    texts[5], texts[17] = "", "   "  # bad items keep their place
    outcomes = pipeline.classify_batch(texts, LLM)
    assert len(outcomes) == len(texts)
    assert [i for i, o in enumerate(outcomes) if isinstance(o, ItemError)] == [5, 17]
    results = [o for o in outcomes if isinstance(o, ClassifyResult)]
    for result in results:
        assert_sound(result)
        assert result.llm_attempts <= ATTEMPTS
    assert sum(r.llm_attempts for r in results) == fake_llm.request_count
    assert any(r.degraded for r in results) and any(not r.degraded for r in results)


# --- circuit breaker ---------------------------------------------------------------------


def test_breaker_opens_on_persistent_failure_and_recovers(
        tmp_path: Path, readonly_index: LabelIndex, fake_llm: FakeOpenAI) -> None:
    # The reset interval outlasts the open-circuit batch even on a loaded CI machine.
    pipeline = fault_pipeline(tmp_path, readonly_index, fake_llm, llm_breaker_failures=2,
                              llm_breaker_reset_s=2.0)
    breaker = pipeline.selector.breaker  # type: ignore[union-attr]
    fake_llm.default = Reply.error(503)
    for _ in range(2):
        assert pipeline.classify(TEXT, LLM).reason == "llm_failed: server_error"
    assert breaker.state == "open" and fake_llm.request_count == 2 * ATTEMPTS
    opened = time.monotonic()
    outcomes = pipeline.classify_batch([TEXT] * 10, LLM)
    assert fake_llm.request_count == 2 * ATTEMPTS  # not hammered
    for result in outcomes:
        assert isinstance(result, ClassifyResult)
        assert result.degraded and result.reason == "llm_failed: circuit_open"
        assert result.llm_attempts == 0 and result.labels[0].id == "pets.cats"
    fake_llm.default = lambda req: Reply.labels(slot_of(req, "Cats"))  # the endpoint is back
    time.sleep(max(0.0, 2.05 - (time.monotonic() - opened)))
    result = pipeline.classify(TEXT, LLM)
    assert not result.degraded and [lab.id for lab in result.labels] == ["pets.cats"]
    assert breaker.state == "closed" and breaker.opens == 1


def test_failed_trial_reopens_the_circuit(tmp_path: Path, readonly_index: LabelIndex,
                                          fake_llm: FakeOpenAI) -> None:
    pipeline = fault_pipeline(tmp_path, readonly_index, fake_llm, llm_breaker_failures=1,
                              llm_breaker_reset_s=0.3, llm_max_attempts=1)
    fake_llm.default = Reply.error(500)
    pipeline.classify(TEXT, LLM)
    time.sleep(0.35)
    assert pipeline.classify(TEXT, LLM).reason == "llm_failed: server_error"  # the trial
    assert pipeline.classify(TEXT, LLM).reason == "llm_failed: circuit_open"
    assert fake_llm.request_count == 2 and pipeline.selector.breaker.opens == 2  # type: ignore[union-attr]


def test_bad_answers_do_not_open_the_circuit(tmp_path: Path, readonly_index: LabelIndex,
                                             fake_llm: FakeOpenAI) -> None:
    pipeline = fault_pipeline(tmp_path, readonly_index, fake_llm, llm_breaker_failures=1)
    fake_llm.default = Reply.garbage()  # the endpoint is up; the model misbehaves
    for _ in range(3):
        assert pipeline.classify(TEXT, LLM).reason == "llm_failed: invalid_answer"
    assert pipeline.selector.breaker.state == "closed"  # type: ignore[union-attr]


def test_breaker_is_shared_by_pipelines_on_one_endpoint(
        tmp_path: Path, readonly_index: LabelIndex, fake_llm: FakeOpenAI) -> None:
    first = fault_pipeline(tmp_path, readonly_index, fake_llm)
    second = fault_pipeline(tmp_path, readonly_index, fake_llm)  # e.g. rebuilt after a reload
    assert first.selector.breaker is second.selector.breaker  # type: ignore[union-attr]


def test_half_open_lets_one_trial_through_at_a_time() -> None:
    now = [0.0]
    breaker = CircuitBreaker(fail_max=2, reset_s=10, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow()
        breaker.record(False)
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow()  # a second caller while the trial runs
    breaker.record(True)
    assert breaker.state == "closed" and breaker.allow()



def test_open_circuit_shows_in_readyz_and_metrics_while_retrieval_serves(
        tmp_path: Path, readonly_index: LabelIndex, readonly_db: Path, embedder: Embedder,
        fake_llm: FakeOpenAI) -> None:
    settings = make_settings(tmp_path, db=readonly_db, top_k=5, threshold=0.3,
                             llm_base_url=fake_llm.base_url, llm_api_key="test",
                             llm_max_attempts=1, llm_max_wait_s=0.01, llm_timeout_s=TIMEOUT_S,
                             llm_breaker_failures=2, llm_breaker_reset_s=60)
    fake_llm.default = Reply.disconnect()
    with TestClient(create_app(settings, load_embedder=lambda: embedder)) as client:
        ready = wait_ready(client)
        assert ready["checks"]["llm"]["circuit"] == "closed"
        for _ in range(3):
            answer = client.post("/v1/classify", json={"text": TEXT})
            assert answer.status_code == 200 and answer.json()["degraded"]
        assert answer.json()["reason"] == "llm_failed: circuit_open"
        assert fake_llm.request_count == 2
        ready = client.get("/readyz")
        assert ready.status_code == 200  # retrieval still answers: degraded, not down
        llm = ready.json()["checks"]["llm"]
        assert llm["circuit"] == "open" and llm["degraded"] and 0 < llm["retry_in_s"] <= 60
        metrics = client.get("/metrics").text
    assert _sample(metrics, "labelrank_llm_circuit", labelrank_llm_circuit="open") == 1
    assert _sample(metrics, "labelrank_llm_circuit", labelrank_llm_circuit="closed") == 0
    assert _sample(metrics, "labelrank_llm_circuit_opens") == 1



@pytest.mark.parametrize("reply", [Reply.slow_headers(1.5, "C01"), Reply.slow_stream(1.5, "C01"),
                                   Reply.hang(1.5)], ids=["headers", "body", "hang"])
def test_the_deadline_covers_the_whole_exchange(reply: Reply, fake_llm: FakeOpenAI) -> None:
    fake_llm.enqueue(reply, Reply.labels("C02"))
    with httpx.Client(transport=DeadlineTransport(0.3), timeout=0.3) as client:
        started = time.perf_counter()
        with pytest.raises(httpx.TimeoutException):
            client.post(f"{fake_llm.base_url}/chat/completions", json={"model": "m"})
        assert time.perf_counter() - started < 0.3 + 0.25  # not 1.5 s: one deadline in total
        # The next request on the same client gets its own deadline, and its answer.
        answer = client.post(f"{fake_llm.base_url}/chat/completions", json={"model": "m"})
        assert answer.json()["choices"][0]["message"]["content"] == '{"labels": ["C02"]}'


def test_the_first_wave_meets_the_format_refusal_and_still_gets_llm_answers(
        tmp_path: Path, readonly_index: LabelIndex, fake_llm: FakeOpenAI) -> None:
    pipeline = fault_pipeline(tmp_path, readonly_index, fake_llm, llm_concurrency=8)
    first_wave = threading.Barrier(8, timeout=30)
    llama = like_llama_cpp(lambda req: Reply.labels(slot_of(req, "Cats")))

    def respond(request: dict) -> Reply:
        if request["response_format"]["type"] == "json_schema":
            first_wave.wait()  # all eight are in flight before the first refusal comes back
        return llama(request)

    fake_llm.default = respond
    outcomes = pipeline.classify_batch([TEXT] * 8, LLM)
    for result in outcomes:
        assert isinstance(result, ClassifyResult)
        assert result.mode == "llm" and not result.degraded, result.reason
        assert [lab.id for lab in result.labels] == ["pets.cats"]
        assert result.llm_attempts == 2  # the refused request and the answered one
    kinds = [(r.get("response_format") or {}).get("type") for r in fake_llm.requests]
    assert kinds == ["json_schema"] * 8 + ["json_object"] * 8  # nobody stepped down twice
