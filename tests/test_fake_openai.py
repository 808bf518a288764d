"""Tests for the fake OpenAI server, exercised with the real openai client over HTTP."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fake_openai import FakeOpenAI, Reply


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """A started fake server, closed after the test."""
    with FakeOpenAI() as server:
        yield server


def _client(fake: FakeOpenAI, timeout: float = 5.0) -> openai.OpenAI:
    """A real openai client pointed at the fake, with no retries."""
    return openai.OpenAI(base_url=fake.base_url, api_key="test", max_retries=0, timeout=timeout)


def _ask(client: openai.OpenAI, text: str, model: str = "gpt-test") -> Any:
    """Send one single-user-message chat completion."""
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


def test_labels_reply_parses_with_usage(fake: FakeOpenAI) -> None:
    """A labels reply is a valid chat.completion with content, model echo and usage."""
    fake.enqueue(Reply.labels("s1", "s2"))
    resp = _ask(_client(fake), "x" * 40, model="my-model")
    assert resp.object == "chat.completion"
    assert resp.model == "my-model"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert json.loads(resp.choices[0].message.content) == {"labels": ["s1", "s2"]}
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 10
    assert resp.usage.completion_tokens == len(resp.choices[0].message.content) // 4
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_explicit_usage_and_default_reply(fake: FakeOpenAI) -> None:
    """Explicit usage is reported verbatim; an empty queue falls back to empty labels."""
    fake.enqueue(Reply.labels("a", usage=(123, 7)))
    client = _client(fake)
    first = _ask(client, "hello")
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (123, 7)
    second = _ask(client, "")
    assert json.loads(second.choices[0].message.content) == {"labels": []}
    assert second.usage.prompt_tokens == 0
    assert second.usage.completion_tokens >= 1


def test_requests_recorded_in_order(fake: FakeOpenAI) -> None:
    """Every request body is recorded, in arrival order, and replies are consumed FIFO."""
    fake.enqueue(Reply.labels("a"), Reply.labels("b"), Reply.labels("c"))
    client = _client(fake)
    answers = [_ask(client, f"msg {i}").choices[0].message.content for i in range(3)]
    assert [json.loads(a)["labels"] for a in answers] == [["a"], ["b"], ["c"]]
    assert fake.request_count == 3
    assert [r["messages"][0]["content"] for r in fake.requests] == ["msg 0", "msg 1", "msg 2"]
    assert all(r["model"] == "gpt-test" for r in fake.requests)


def test_rate_limit_with_retry_after(fake: FakeOpenAI) -> None:
    """429 arrives as RateLimitError with Retry-After visible on the response."""
    fake.enqueue(Reply.error(429, retry_after=2, message="slow down"))
    with pytest.raises(openai.RateLimitError) as info:
        _ask(_client(fake), "hi")
    err = info.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "2"
    assert "slow down" in str(err)
    assert err.code == "rate_limit_exceeded"
    assert err.body == {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}


def test_server_error(fake: FakeOpenAI) -> None:
    """500 arrives as InternalServerError."""
    fake.enqueue(Reply.error(500, message="boom"))
    with pytest.raises(openai.InternalServerError) as info:
        _ask(_client(fake), "hi")
    assert info.value.status_code == 500
    assert "retry-after" not in info.value.response.headers


def test_garbage_body(fake: FakeOpenAI) -> None:
    """Non-JSON body labelled application/json: the SDK raises a bare JSONDecodeError."""
    fake.enqueue(Reply.garbage())
    # Note: this is NOT an openai.APIError; callers must catch ValueError as well.
    with pytest.raises(json.JSONDecodeError):
        _ask(_client(fake), "hi")


def test_garbage_body_text_plain(fake: FakeOpenAI) -> None:
    """Non-JSON body labelled text/plain: the SDK returns the raw str, not a ChatCompletion."""
    fake.enqueue(Reply(body=b"not json", headers={"Content-Type": "text/plain"}))
    resp = _ask(_client(fake), "hi")
    assert resp == "not json"


def test_hang_times_out_and_close_is_prompt() -> None:
    """A hang past the client timeout raises APITimeoutError; close() still returns fast."""
    server = FakeOpenAI().start()
    try:
        server.enqueue(Reply.hang(30))
        with pytest.raises(openai.APITimeoutError):
            _ask(_client(server, timeout=0.5), "hi")
        assert server.request_count == 1
    finally:
        t0 = time.monotonic()
        server.close()
        elapsed = time.monotonic() - t0
    assert elapsed < 2.0


def test_short_delay_still_answers(fake: FakeOpenAI) -> None:
    """A delay under the client timeout just slows the answer down."""
    fake.enqueue(Reply.labels("late", delay_s=0.2))
    t0 = time.monotonic()
    resp = _ask(_client(fake, timeout=3), "hi")
    assert time.monotonic() - t0 >= 0.2
    assert json.loads(resp.choices[0].message.content) == {"labels": ["late"]}


def test_disconnect(fake: FakeOpenAI) -> None:
    """Dropping the socket without a response raises APIConnectionError."""
    fake.enqueue(Reply.disconnect())
    client = _client(fake)
    with pytest.raises(openai.APIConnectionError) as info:
        _ask(client, "hi")
    assert not isinstance(info.value, openai.APITimeoutError)
    # The server keeps working afterwards.
    assert json.loads(_ask(client, "again").choices[0].message.content) == {"labels": []}


def test_responder_sees_request(fake: FakeOpenAI) -> None:
    """A responder gets the parsed request and can choose the content from it."""
    seen: list[dict[str, Any]] = []

    def pick_first_slot(request: dict[str, Any]) -> Reply:
        seen.append(request)
        user = next(m["content"] for m in request["messages"] if m["role"] == "user")
        match = re.search(r"\bS\d+\b", user)
        return Reply.labels(*([match.group(0)] if match else []))

    fake.enqueue(pick_first_slot)
    resp = _ask(_client(fake), "candidates: S17 widget, S4 gadget")
    assert json.loads(resp.choices[0].message.content) == {"labels": ["S17"]}
    assert resp.usage is not None
    assert len(seen) == 1 and seen[0]["messages"][0]["content"].startswith("candidates")


def test_responder_as_default() -> None:
    """A responder given as default answers every unscripted request."""

    def echo(request: dict[str, Any]) -> Reply:
        return Reply(content=request["messages"][-1]["content"].upper())

    with FakeOpenAI(default=echo) as server:
        client = _client(server)
        assert _ask(client, "abc").choices[0].message.content == "ABC"
        assert _ask(client, "xyz").choices[0].message.content == "XYZ"


def test_responder_exception_becomes_500(fake: FakeOpenAI) -> None:
    """A responder that raises yields a 500 and is recorded in `errors`."""

    def broken(request: dict[str, Any]) -> Reply:
        raise KeyError("nope")

    fake.enqueue(broken)
    with pytest.raises(openai.InternalServerError):
        _ask(_client(fake), "hi")
    assert len(fake.errors) == 1 and isinstance(fake.errors[0], KeyError)


def test_concurrent_requests(fake: FakeOpenAI) -> None:
    """Eight threads at once are all answered and recorded."""
    fake.default = lambda req: Reply(content=req["messages"][0]["content"], delay_s=0.1)
    client = _client(fake)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = _ask(client, f"thread {i}").choices[0].message.content
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors
    assert results == {i: f"thread {i}" for i in range(8)}
    assert fake.request_count == 8
    assert sorted(r["messages"][0]["content"] for r in fake.requests) == sorted(results.values())
    assert time.monotonic() - t0 < 0.1 * 8  # served in parallel, not one after another


def test_models_and_unknown_paths(fake: FakeOpenAI) -> None:
    """GET /v1/models lists fake-model; other paths get an OpenAI-style 404."""
    models = _client(fake).models.list()
    assert [m.id for m in models.data] == ["fake-model"]
    resp = httpx.post(fake.base_url + "/embeddings", json={"input": "x"})
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(fake.base_url.removesuffix("/v1") + "/nope").status_code == 404
    assert fake.request_count == 0


def test_invalid_json_request_is_400(fake: FakeOpenAI) -> None:
    """A non-JSON request body gets a 400 error."""
    resp = httpx.post(
        fake.base_url + "/chat/completions",
        content=b"{{",
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 400
    assert "error" in resp.json()


def test_base_url_requires_start_and_close_is_idempotent() -> None:
    """base_url needs a started server; close() may be called twice."""
    server = FakeOpenAI()
    with pytest.raises(RuntimeError):
        _ = server.base_url
    server.start()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", server.base_url)
    server.close()
    server.close()
