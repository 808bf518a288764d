"""The LLM's infer step over real HTTP against the fake OpenAI-compatible server: the prompt it
sends, phrases searched beside the text, its answers cached, its cost counted, and every fault
degrading to plain retrieval with a result that says so."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from eval.datasets import load_dataset
from eval.run import EvalConfig, run_eval
from prompts.answer import InvalidAnswer
from prompts.infer_answer import MAX_PHRASE_CHARS, parse_phrases
from retrieval.index import LabelIndex
from service.batch.report import summary
from service.batch.run import BatchOptions, run_batch
from service.engine import open_engine
from service.factory import build_pipeline
from service.pipeline import ClassifyOptions, Pipeline
from service.settings import Settings
from tests.conftest import make_settings
from tests.fake_openai import FakeOpenAI, Reply
from tests.test_llm_selection import slots_in_prompt

LLM = ClassifyOptions(mode="llm")
TEXT = "my kitten keeps biting my fingers"
TAX_PHRASE = "income tax return"  # names a label the text's own words never reach
INFER_USAGE, SELECT_USAGE = (40, 6), (120, 7)


def is_infer(request: dict) -> bool:
    """Whether a request is the infer step's (its schema is named label_phrases)."""
    return (request.get("response_format") or {}).get("json_schema", {}).get(
        "name") == "label_phrases"


def answer(phrases: Sequence[str] | Reply, *chosen: str):
    """A responder: the infer step gets `phrases` (or a scripted reply), the select step the
    slots of those candidates named `chosen` that it was offered."""
    def respond(request: dict) -> Reply:
        if is_infer(request):
            if isinstance(phrases, Reply):
                return phrases
            return Reply(content=json.dumps({"phrases": list(phrases)}), usage=INFER_USAGE)
        offered = {name: slot for slot, name in slots_in_prompt(request).items()}
        return Reply.labels(*(offered[name] for name in chosen if name in offered),
                            usage=SELECT_USAGE)

    return respond


def infer_settings(tmp_path: Path, fake: FakeOpenAI, **overrides: object) -> Settings:
    """The fake LLM with the infer step on, fast retries, a short timeout, a 2-label shortlist."""
    base = {"llm_base_url": fake.base_url, "llm_api_key": "test", "llm_model": "fake-model",
            "llm_infer": True, "llm_max_attempts": 2, "llm_max_wait_s": 0.02,
            "llm_timeout_s": 0.5, "top_k": 2, "threshold": 0.3}
    return make_settings(tmp_path, **{**base, **overrides})


@pytest.fixture
def pipeline(tmp_path: Path, mini_index: LabelIndex, fake_llm: FakeOpenAI) -> Pipeline:
    return build_pipeline(infer_settings(tmp_path, fake_llm), index=mini_index)


def candidate_ids(pipeline: Pipeline, text: str, **options: object) -> list[str]:
    result = pipeline.classify(text, ClassifyOptions(**options))  # type: ignore[arg-type]
    return [c.id for c in result.candidates]


def test_infer_is_off_by_default(llm_pipeline: Pipeline, fake_llm: FakeOpenAI) -> None:
    assert Settings.model_fields["llm_infer"].default is False
    llm_pipeline.classify(TEXT, LLM)
    assert fake_llm.request_count == 1 and not is_infer(fake_llm.requests[0])


def test_the_prompt_asks_for_the_texts_phrases(pipeline: Pipeline, fake_llm: FakeOpenAI) -> None:
    fake_llm.default = answer(["cat behaviour"], "Cats")
    result = pipeline.classify(TEXT, LLM)
    infer, select = fake_llm.requests
    assert is_infer(infer) and not is_infer(select)  # the infer call comes first
    system, user = (m["content"] for m in infer["messages"])
    assert json.dumps(TEXT) in user  # the text, delimited as a JSON string
    assert "phrases" in system and "at most 5" in system  # llm_infer_phrases
    schema = infer["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["phrases"] and schema["additionalProperties"] is False
    assert [lab.id for lab in result.labels] == ["pets.cats"]
    assert result.mode == "llm" and not result.degraded and result.llm_attempts == 2


def test_an_inferred_phrase_widens_the_shortlist(pipeline: Pipeline,
                                                 fake_llm: FakeOpenAI) -> None:
    plain = candidate_ids(pipeline, TEXT, mode="retrieval")  # no LLM, so no infer call
    assert fake_llm.request_count == 0 and "money.taxes" not in plain
    fake_llm.default = answer([TAX_PHRASE], "Taxes")
    result = pipeline.classify(TEXT, LLM)
    assert "money.taxes" in [c.id for c in result.candidates]
    assert "Taxes" in slots_in_prompt(fake_llm.requests[1]).values()  # the LLM was offered it
    assert [lab.id for lab in result.labels] == ["money.taxes"]


@pytest.mark.parametrize("subqueries", [0, 2])
def test_phrases_join_the_sub_queries_or_stand_alone(tmp_path: Path, mini_index: LabelIndex,
                                                     subqueries: int) -> None:
    retriever = build_pipeline(make_settings(tmp_path, subqueries=subqueries),
                               index=mini_index).retriever
    texts = [TEXT, "how long to bake a chocolate cake"]
    plain = retriever.candidates(texts, 3)
    widened = retriever.candidates(texts, 3, phrases=[[TAX_PHRASE], []])
    assert "money.taxes" not in [c.label_id for c in plain[0]]
    assert "money.taxes" in [c.label_id for c in widened[0]]
    # A text without phrases is searched as before (batched apart: last digits may differ).
    assert ([(c.label_id, round(c.score, 4)) for c in widened[1]]
            == [(c.label_id, round(c.score, 4)) for c in plain[1]])


def test_the_infer_answer_is_cached_and_its_tokens_counted(
        tmp_path: Path, mini_index: LabelIndex, fake_llm: FakeOpenAI) -> None:
    gold = tmp_path / "gold.jsonl"
    texts = [TEXT, "my puppy chews the sofa", "grinding beans for espresso"]
    gold.write_text("".join(json.dumps({"text": t, "labels": []}) + "\n" for t in texts))
    fake_llm.default = answer([TAX_PHRASE], "Taxes")

    def run(**overrides: object) -> dict:
        settings = infer_settings(tmp_path, fake_llm, llm_model="gpt-4o-mini", **overrides)
        return run_eval(open_engine(settings, index=mini_index), load_dataset(gold),
                        EvalConfig(mode="llm", cache_dir=tmp_path / "cache"))

    # A run without the step first fills the retrieval cache: the shortlists asked with
    # phrases must not be taken from it.
    run(llm_infer=False)
    assert fake_llm.request_count == len(texts)
    first = run()
    assert fake_llm.request_count == 3 * len(texts)  # one infer and one new select per text
    assert all("money.taxes" in [c[0] for c in row["candidates"]]
               for row in first["predictions"])
    totals = first["totals"]
    calls = {"llm_calls": 2 * len(texts), "cached_llm": 0}
    assert {k: totals[k] for k in calls} == calls
    prompt_tokens = len(texts) * (INFER_USAGE[0] + SELECT_USAGE[0])
    completion_tokens = len(texts) * (INFER_USAGE[1] + SELECT_USAGE[1])
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (prompt_tokens,
                                                                      completion_tokens)
    assert totals["cost_usd"] == pytest.approx((prompt_tokens * 0.15
                                                + completion_tokens * 0.60) / 1e6)

    again = run()
    assert fake_llm.request_count == 3 * len(texts)  # no infer request, no select request
    assert again["totals"]["cached_llm"] == len(texts) and again["totals"]["llm_calls"] == 0
    assert again["predictions"] == first["predictions"]

    run(llm_infer_phrases=3)  # another infer request; the same shortlists, so selects cached
    assert fake_llm.request_count == 4 * len(texts)
    assert all(is_infer(r) for r in fake_llm.requests[-len(texts):])


def test_batch_counts_and_caches_the_infer_step(tmp_path: Path, mini_index: LabelIndex,
                                                fake_llm: FakeOpenAI) -> None:
    source = tmp_path / "in.jsonl"
    texts = [TEXT, "my puppy chews the sofa"]
    source.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                              for i, t in enumerate(texts)))
    fake_llm.default = answer([TAX_PHRASE], "Taxes")
    engine = open_engine(infer_settings(tmp_path, fake_llm), index=mini_index)
    options = BatchOptions(mode="llm", cache_dir=tmp_path / "cache")
    first = run_batch(engine, str(source), tmp_path / "out.jsonl", options, tty=False)
    assert fake_llm.request_count == 2 * len(texts)
    tokens = (len(texts) * (INFER_USAGE[0] + SELECT_USAGE[0]),
              len(texts) * (INFER_USAGE[1] + SELECT_USAGE[1]))
    assert (first.prompt_tokens, first.completion_tokens) == tokens
    assert f"{tokens[0]} prompt + {tokens[1]} completion" in summary(first, "fake-model", {})
    again = run_batch(engine, str(source), tmp_path / "again.jsonl", options, tty=False)
    assert fake_llm.request_count == 2 * len(texts)  # both steps answered from the cache
    assert again.cached_answers == 2 * len(texts)


def test_a_timeout_degrades_to_plain_retrieval(pipeline: Pipeline,
                                               fake_llm: FakeOpenAI) -> None:
    plain = candidate_ids(pipeline, TEXT, mode="retrieval")
    fake_llm.default = answer(Reply.hang(3.0), "Cats")
    result = pipeline.classify(TEXT, LLM)
    assert fake_llm.request_count == 2 + 1  # two infer attempts, then the select step
    assert result.degraded and result.reason == "llm_infer_failed: timeout"
    assert [c.id for c in result.candidates] == plain
    assert result.mode == "llm" and [lab.id for lab in result.labels] == ["pets.cats"]
    assert result.llm_attempts == 3 and result.usage.prompt_tokens == SELECT_USAGE[0]


@pytest.mark.parametrize("garbage", [
    Reply(content="The text is about cats and their behaviour."),  # prose
    Reply.garbage(),  # a body that is not JSON
    Reply(content=json.dumps({"phrases": "cats"})),  # not a list
    Reply(content=json.dumps({"phrases": ["x" * (MAX_PHRASE_CHARS + 1), "  "]})),  # none usable
])
def test_a_garbage_answer_degrades_without_retry(pipeline: Pipeline, fake_llm: FakeOpenAI,
                                                 garbage: Reply) -> None:
    plain = candidate_ids(pipeline, TEXT, mode="retrieval")
    fake_llm.default = answer(garbage, "Cats")
    result = pipeline.classify(TEXT, LLM)
    assert fake_llm.request_count == 2  # not retried
    assert result.degraded and result.reason == "llm_infer_failed: invalid_answer"
    assert [c.id for c in result.candidates] == plain
    assert [lab.id for lab in result.labels] == ["pets.cats"]


def test_no_phrases_is_an_answer_not_a_fault(pipeline: Pipeline, fake_llm: FakeOpenAI) -> None:
    plain = candidate_ids(pipeline, TEXT, mode="retrieval")
    fake_llm.default = answer([], "Cats")
    result = pipeline.classify(TEXT, LLM)
    assert not result.degraded and [c.id for c in result.candidates] == plain


def test_an_open_circuit_sends_nothing(tmp_path: Path, mini_index: LabelIndex,
                                       fake_llm: FakeOpenAI) -> None:
    settings = infer_settings(tmp_path, fake_llm, llm_breaker_failures=1,
                              llm_breaker_reset_s=600)
    pipeline = build_pipeline(settings, index=mini_index)
    fake_llm.default = Reply.error(503)
    first = pipeline.classify(TEXT, LLM)  # the infer step's failures open the circuit
    assert fake_llm.request_count == 2 and first.llm_attempts == 2
    assert first.degraded and first.reason == "llm_failed: circuit_open"
    again = pipeline.classify(TEXT, LLM)
    assert fake_llm.request_count == 2  # neither step called the endpoint
    assert again.degraded and again.mode == "retrieval" and again.llm_attempts == 0
    assert again.labels[0].id == "pets.cats"  # the threshold answer on plain retrieval


def test_phrases_are_validated() -> None:
    answer = json.dumps({"phrases": [" Income  tax ", "income TAX", "", "!!", "cats",
                                     "x" * (MAX_PHRASE_CHARS + 1), "dogs", "birds"]})
    assert parse_phrases(answer, 3) == ["Income tax", "cats", "dogs"]
    assert parse_phrases('["cats"]', 5) == ["cats"]  # a bare list is read too
    assert parse_phrases('Sure: {"phrases": ["cats"]}', 5) == ["cats"]
    assert parse_phrases('{"phrases": []}', 5) == []
    for bad in ("", "cats, dogs", '{"labels": ["C01"]}', '{"phrases": [1, 2]}'):
        with pytest.raises(InvalidAnswer):
            parse_phrases(bad, 5)


@pytest.mark.llm
def test_infer_step_against_the_local_engine(tmp_path: Path, mini_index: LabelIndex) -> None:
    """Plumbing only: a 270M model's phrases are not judged."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed: run make test-llm")
    import httpx

    from prompts.local_llm import MODEL_ALIAS, LocalLLMServer

    with LocalLLMServer(log=tmp_path / "server.log") as server:
        settings = make_settings(tmp_path, llm_base_url=server.base_url, llm_api_key="local",
                                 llm_model=MODEL_ALIAS, llm_infer=True, llm_infer_phrases=3,
                                 top_k=5, max_labels=2, llm_timeout_s=180,
                                 llm_max_answer_tokens=96, llm_concurrency=1)
        pipeline = build_pipeline(settings, index=mini_index)
        sent: list[dict] = []
        pipeline.selector.client = pipeline.selector.client.with_options(
            http_client=httpx.Client(event_hooks={
                "request": [lambda request: sent.append(json.loads(request.content))]}))
        result = pipeline.classify(TEXT, LLM)
    infer = [body for body in sent if "phrases" in json.dumps(body.get("response_format"))]
    assert infer and infer[-1]["response_format"]["type"] == "json_object"  # llama.cpp's dialect
    assert infer[-1]["response_format"]["schema"]["properties"]["phrases"]["maxItems"] == 3
    assert not result.degraded, result.reason
    assert result.llm_attempts >= 2 and result.usage.completion_tokens > 0
