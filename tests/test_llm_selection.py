"""The LLM path over real HTTP against the fake OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import time

from prompts.answer import answer_schema
from service.pipeline import ClassifyOptions, Pipeline
from tests.fake_openai import FakeOpenAI, Reply

LLM = ClassifyOptions(mode="llm")
TEXT = "my kitten keeps biting my fingers"


def slots_in_prompt(request: dict) -> dict[str, str]:
    """Slot id -> candidate name, as listed in the user message."""
    user = request["messages"][-1]["content"]
    return dict(re.findall(r"^(C\d\d) \| ([^—\n]+?)(?: —|$)", user, flags=re.M))


def slot_of(request: dict, name: str) -> str:
    return next(s for s, n in slots_in_prompt(request).items() if n == name)


def test_prompt_lists_exactly_the_candidates(llm_pipeline: Pipeline,
                                             fake_llm: FakeOpenAI) -> None:
    result = llm_pipeline.classify(TEXT, LLM)
    request = fake_llm.requests[0]
    listed = slots_in_prompt(request)
    assert list(listed.values()) == [c.name for c in result.candidates]
    assert list(listed) == [f"C{i:02d}" for i in range(1, len(result.candidates) + 1)]
    names_not_candidates = {"Dogs", "Cats", "Baking", "Coffee", "Budgeting", "Taxes"} - set(
        listed.values())
    user = request["messages"][-1]["content"]
    assert not any(f"| {name}" in user for name in names_not_candidates)
    assert json.dumps(TEXT) in user  # the text is delimited as a JSON string


def test_schema_slots_are_a_fixed_enum(llm_pipeline: Pipeline, fake_llm: FakeOpenAI) -> None:
    llm_pipeline.classify(TEXT, LLM)
    llm_pipeline.classify("how do I file my taxes", LLM)
    formats = [r["response_format"] for r in fake_llm.requests]
    assert formats[0] == formats[1]  # one schema for every request: providers compile it once
    enum = formats[0]["json_schema"]["schema"]["properties"]["labels"]["items"]["enum"]
    assert enum == answer_schema(len(enum))["properties"]["labels"]["items"]["enum"]
    assert set(slots_in_prompt(fake_llm.requests[0])) <= set(enum)


def test_chosen_slot_maps_back_to_its_label(llm_pipeline: Pipeline,
                                            fake_llm: FakeOpenAI) -> None:
    fake_llm.default = lambda req: Reply.labels(slot_of(req, "Cats"), usage=(120, 7))
    result = llm_pipeline.classify(TEXT, LLM)
    assert [lab.id for lab in result.labels] == ["pets.cats"]
    assert result.mode == "llm" and not result.degraded
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (120, 7)


def test_ids_outside_the_candidates_are_dropped(llm_pipeline: Pipeline,
                                                fake_llm: FakeOpenAI) -> None:
    fake_llm.default = lambda req: Reply.labels("C99", "money.taxes-ish", slot_of(req, "Cats"))
    result = llm_pipeline.classify(TEXT, LLM)
    assert [lab.id for lab in result.labels] == ["pets.cats"]
    assert result.dropped_ids == ["C99", "money.taxes-ish"]


def test_empty_answer_means_none(llm_pipeline: Pipeline, fake_llm: FakeOpenAI) -> None:
    fake_llm.enqueue(Reply.labels())
    result = llm_pipeline.classify(TEXT, LLM)
    assert result.labels == [] and result.mode == "llm" and not result.degraded
    assert result.reason == "the LLM chose none of the candidates"


def test_rate_limit_with_retry_after_is_retried(llm_pipeline: Pipeline,
                                                fake_llm: FakeOpenAI) -> None:
    llm_pipeline.selector.config = llm_pipeline.selector.config.__class__(
        **{**llm_pipeline.selector.config.__dict__, "max_wait_s": 5.0})
    fake_llm.enqueue(Reply.error(429, retry_after=0.4),
                     lambda req: Reply.labels(slot_of(req, "Cats")))
    started = time.perf_counter()
    result = llm_pipeline.classify(TEXT, LLM)
    assert time.perf_counter() - started >= 0.4  # Retry-After was honoured
    assert fake_llm.request_count == 2 and result.llm_attempts == 2
    assert [lab.id for lab in result.labels] == ["pets.cats"] and not result.degraded


def test_persistent_failure_degrades_to_retrieval(llm_pipeline: Pipeline,
                                                  fake_llm: FakeOpenAI) -> None:
    fake_llm.default = Reply.error(503)
    result = llm_pipeline.classify(TEXT, LLM)
    assert fake_llm.request_count == 3  # llm_max_attempts
    assert result.degraded and result.mode == "retrieval"
    assert result.reason == "llm_failed: server_error"
    assert result.labels[0].id == "pets.cats"  # the threshold answer, not nothing


def test_garbage_answer_degrades_without_retry(llm_pipeline: Pipeline,
                                               fake_llm: FakeOpenAI) -> None:
    fake_llm.default = Reply.garbage()
    result = llm_pipeline.classify(TEXT, LLM)
    assert fake_llm.request_count == 1
    assert result.degraded and result.reason == "llm_failed: invalid_answer"


def test_prose_answer_is_invalid_but_plain_slot_list_is_read(llm_pipeline: Pipeline,
                                                             fake_llm: FakeOpenAI) -> None:
    fake_llm.enqueue(Reply(content="I think it is about animals."))
    assert llm_pipeline.classify(TEXT, LLM).reason == "llm_failed: invalid_answer"
    fake_llm.enqueue(lambda req: Reply(content=f"Answer: {slot_of(req, 'Cats')}"))
    assert [lab.id for lab in llm_pipeline.classify(TEXT, LLM).labels] == ["pets.cats"]


def test_client_error_is_not_retried(llm_pipeline: Pipeline, fake_llm: FakeOpenAI) -> None:
    fake_llm.default = Reply.error(400, message="model not found")
    result = llm_pipeline.classify(TEXT, LLM)
    assert fake_llm.request_count == 1 and result.reason == "llm_failed: http_400"


def test_timeout_is_retried_then_degrades(llm_pipeline: Pipeline, fake_llm: FakeOpenAI) -> None:
    llm_pipeline.selector.client = llm_pipeline.selector.client.with_options(timeout=0.3)
    fake_llm.default = Reply.hang(2.0)
    result = llm_pipeline.classify(TEXT, LLM)
    assert fake_llm.request_count == 3
    assert result.degraded and result.reason == "llm_failed: timeout"


def test_batch_calls_run_concurrently_and_keep_order(llm_pipeline: Pipeline,
                                                     fake_llm: FakeOpenAI) -> None:
    arrivals: list[float] = []

    def answer(req: dict) -> Reply:
        arrivals.append(time.monotonic())
        text = json.loads(req["messages"][-1]["content"].split("a JSON string):\n")[1]
                          .split("\n")[0])
        name = "Cats" if "cat" in text else "Taxes"
        return Reply(content=json.dumps({"labels": [slot_of(req, name)]}), delay_s=1.0)

    fake_llm.default = answer
    texts = ["my cat is sick", "tax deadline question", "cat litter", "taxes on savings"] * 2
    outcomes = llm_pipeline.classify_batch(texts, LLM)
    assert [o.labels[0].id for o in outcomes] == ["pets.cats", "money.taxes"] * 4
    # Sequential calls could not arrive while the first one's 1 s answer was still pending.
    assert sum(t < min(arrivals) + 1.0 for t in arrivals) >= 2


def test_auto_format_steps_down_when_the_server_rejects_json_schema(
        llm_pipeline: Pipeline, fake_llm: FakeOpenAI) -> None:
    # llama.cpp answers OpenAI's json_schema with an HTTP 500 validation error.
    fake_llm.enqueue(Reply.error(500, message="Unrecognized response_format type json_schema"))
    fake_llm.default = lambda req: Reply.labels(slot_of(req, "Cats"))
    result = llm_pipeline.classify(TEXT, LLM)
    assert [lab.id for lab in result.labels] == ["pets.cats"] and not result.degraded
    types = [r["response_format"]["type"] for r in fake_llm.requests]
    assert types == ["json_schema", "json_object"]  # not retried as a transient 500
    enum = fake_llm.requests[1]["response_format"]["schema"]["properties"]["labels"]["items"]
    assert "C01" in enum["enum"]  # the slot constraint travels with json_object
    llm_pipeline.classify(TEXT, LLM)
    assert fake_llm.requests[2]["response_format"]["type"] == "json_object"  # remembered


def test_explicit_format_does_not_step_down(llm_pipeline: Pipeline,
                                            fake_llm: FakeOpenAI) -> None:
    selector = llm_pipeline.selector
    selector.config = selector.config.__class__(**{**selector.config.__dict__,
                                                   "response_format": "json_schema"})
    selector.dialect = "json_schema"
    fake_llm.default = Reply.error(500, message="json_schema not supported")
    result = llm_pipeline.classify(TEXT, LLM)
    assert fake_llm.request_count == 1
    assert result.degraded and result.reason == "llm_failed: format_rejected"


def test_label_deleted_while_the_llm_answers_is_skipped(llm_pipeline: Pipeline,
                                                        fake_llm: FakeOpenAI) -> None:
    def delete_then_answer(req: dict) -> Reply:
        llm_pipeline.index.delete(["pets.cats"])  # a concurrent API edit
        return Reply.labels(slot_of(req, "Cats"), slot_of(req, "Dogs"))

    fake_llm.default = delete_then_answer
    result = llm_pipeline.classify(TEXT, LLM)
    assert [lab.id for lab in result.labels] == ["pets.dogs"]
    assert "pets.cats" not in {c.id for c in result.candidates}
    # The next request's prompt no longer offers it at all.
    fake_llm.default = Reply.labels()
    llm_pipeline.classify(TEXT, LLM)
    assert "Cats" not in slots_in_prompt(fake_llm.requests[-1]).values()
