"""Batch labeling uses the LLM answer cache eval uses: a rerun after a settings-only change
(here with --force into a half-written output) pays for no request it already paid for, and
the summary counts the answers the cache gave (real pipeline, fake LLM over HTTP)."""

from __future__ import annotations

import json
from pathlib import Path

from prompts.answer_cache import CachedSelector, Store
from retrieval.index import LabelIndex
from service.batch.report import summary
from service.batch.run import BatchOptions, run_batch
from service.engine import open_engine
from service.factory import build_pipeline
from service.pipeline import ClassifyOptions
from tests.conftest import make_settings
from tests.fake_openai import FakeOpenAI, Reply, like_llama_cpp
from tests.test_llm_selection import slot_of

TEXTS = ["my kitten keeps biting my fingers", "my puppy chews the sofa",
         "when do I file my tax return", "my sourdough did not rise", "best espresso beans",
         "the cat sleeps on the keyboard"]


def first_candidate(request: dict) -> Reply:
    return Reply.labels("C01")


def llm_settings(tmp_path: Path, fake: FakeOpenAI, **overrides: object):
    return make_settings(tmp_path, llm_base_url=fake.base_url, llm_api_key="test",
                         llm_model="fake-model", llm_max_attempts=1, top_k=5,
                         **{"threshold": 0.3, **overrides})


def test_a_forced_rerun_after_a_settings_change_pays_only_for_new_requests(
        tmp_path: Path, mini_index: LabelIndex, fake_llm: FakeOpenAI) -> None:
    fake_llm.default = first_candidate
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n"
                              for i, t in enumerate(TEXTS)))
    output, cache = tmp_path / "out.jsonl", tmp_path / "cache"
    options = BatchOptions(mode="llm", cache_dir=cache)
    first = run_batch(open_engine(llm_settings(tmp_path, fake_llm), index=mini_index),
                      str(source), output, options, tty=False)
    assert fake_llm.request_count == len(TEXTS) and first.cached_answers == 0
    labelled = [json.loads(line) for line in output.read_text().splitlines()]
    # A kill left the first two records; the threshold changed (it is not in the LLM request).
    output.write_text("".join(json.dumps(r) + "\n" for r in labelled[:2]))
    changed = llm_settings(tmp_path, fake_llm, threshold=0.5)
    forced = BatchOptions(mode="llm", cache_dir=cache, force=True)
    second = run_batch(open_engine(changed, index=mini_index), str(source), output, forced,
                       tty=False)

    assert fake_llm.request_count == len(TEXTS)  # not one request more
    relabelled = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in relabelled] == [r["id"] for r in labelled]
    assert [r["labels"] for r in relabelled] == [r["labels"] for r in labelled]
    assert all(r["mode"] == "llm" and not r["degraded"] for r in relabelled)
    assert second.cached_answers == len(TEXTS) - 2
    assert second.cached_usage.prompt_tokens > 0
    assert f"LLM answers from the cache: {len(TEXTS) - 2} (no request;" in summary(
        second, "fake-model", {})

    without = BatchOptions(mode="llm", cache_dir=None)  # --no-cache
    run_batch(open_engine(changed, index=mini_index), str(source), tmp_path / "again.jsonl",
              without, tty=False)
    assert fake_llm.request_count == 2 * len(TEXTS)


def test_a_new_run_finds_answers_stored_after_the_dialect_was_learnt(
        tmp_path: Path, mini_index: LabelIndex, fake_llm: FakeOpenAI) -> None:
    # llama.cpp refuses json_schema: answers are asked in json_object, yet stored under the
    # request a new run sends first (json_schema), so the next run asks nothing again.
    fake_llm.default = like_llama_cpp(lambda request: Reply.labels(slot_of(request, "Cats")))
    store = Store(tmp_path / "cache" / "cache.sqlite")
    settings = llm_settings(tmp_path, fake_llm, llm_concurrency=1)
    for run in range(2):
        pipeline = build_pipeline(settings, index=mini_index)
        cached = CachedSelector(pipeline.selector, store)
        outcomes = pipeline.with_parts(selector=cached).classify_batch(
            TEXTS[:3], ClassifyOptions(mode="llm"))
        assert all(not o.degraded and o.mode == "llm" for o in outcomes)
        assert cached.hits == (0 if run == 0 else 3)
    assert fake_llm.request_count == 1 + 3  # one refusal, three answers, nothing on rerun


def test_answers_stored_by_an_older_release_still_load(
        tmp_path: Path, mini_index: LabelIndex, fake_llm: FakeOpenAI) -> None:
    # Selection once carried prompt_tokens_estimate and dropped_options; entries stored then
    # keep those keys and must still be cache hits, not a crash on load.
    fake_llm.default = first_candidate
    store = Store.in_dir(tmp_path / "cache")
    pipeline = build_pipeline(llm_settings(tmp_path, fake_llm), index=mini_index)
    first = CachedSelector(pipeline.selector, store)
    pipeline.with_parts(selector=first).classify_batch(TEXTS[:2], ClassifyOptions(mode="llm"))
    rows = store._db.execute("SELECT key, value FROM kv").fetchall()
    store.put_many({key: json.dumps({**json.loads(value), "prompt_tokens_estimate": 321,
                                     "dropped_options": 0}) for key, value in rows})
    again = CachedSelector(pipeline.selector, store)
    outcomes = pipeline.with_parts(selector=again).classify_batch(TEXTS[:2],
                                                                  ClassifyOptions(mode="llm"))
    assert again.hits == 2 and fake_llm.request_count == 2
    assert all(not o.degraded and o.labels for o in outcomes)
