"""Batch labeling against real parts: MiniLM, Chroma in a temp dir, the fake LLM over HTTP."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from retrieval.catalog import load_catalog
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.index import LabelIndex, chroma_client
from service.batch.io import CorruptOutputError
from service.batch.openai_files import batch_dir, collect, prepare
from service.batch.report import Stats, estimate_cost, summary
from service.batch.run import BatchOptions, run_batch
from service.batch.sidecar import BatchMismatchError, meta_path
from service.engine import open_engine
from service.pipeline import NoLLMConfigured
from service.settings import Settings
from tests.conftest import MINI_CATALOG, make_settings
from tests.fake_openai import FakeOpenAI, Reply

CLI = [sys.executable, "-c", "from eval.cli import main; main()"]
TOPICS = ["my cat scratches the sofa", "when is my tax return due", "my sourdough did not rise",
          "espresso tastes sour", "how do I walk a puppy on a leash", "tracking grocery spending"]
LLM = BatchOptions(mode="llm")
RETRIEVAL = BatchOptions(mode="retrieval")
# A 429 or 500 must answer well inside the timeout on a loaded CI machine (at 0.25 s one did
# not), and a hung reply must outlast it by far.
TIMEOUT_S, HANG_S = 1.0, 5.0


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> Path:
    db = tmp_path_factory.mktemp("batch") / "db"
    LabelIndex(chroma_client(db), embedder).sync(load_catalog(MINI_CATALOG))
    return db


@pytest.fixture(scope="module")
def index(db: Path, embedder: SentenceTransformerEmbedder) -> LabelIndex:
    return LabelIndex(chroma_client(db), embedder)


def llm_settings(tmp_path: Path, db: Path, fake: FakeOpenAI, **overrides: object) -> Settings:
    base = {"llm_max_attempts": 2, "llm_max_wait_s": 0.01, "llm_timeout_s": 2.0, "top_k": 5}
    return make_settings(tmp_path, db=db, llm_base_url=fake.base_url, llm_api_key="test",
                         llm_model="fake-model", **{**base, **overrides})


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def item_number(request: dict) -> int:
    return int(re.search(r"item (\d+):", request["messages"][-1]["content"]).group(1))


def test_faulty_llm_every_id_once_in_order(tmp_path: Path, db: Path, index: LabelIndex,
                                           fake_llm: FakeOpenAI) -> None:
    seen: Counter[int] = Counter()

    def chaos(request: dict) -> Reply:
        n = item_number(request)
        seen[n] += 1
        return {0: Reply.error(429), 1: Reply.error(500), 2: Reply.hang(HANG_S),
                3: Reply.garbage(), 4: Reply.error(429) if seen[n] == 1 else Reply.labels("C01"),
                5: Reply(content="I would say it is about animals.")}.get(n % 10,
                                                                          Reply.labels("C01"))

    fake_llm.default = chaos
    rows = [{"id": f"r{i}", "text": "" if i % 50 == 49 else f"item {i}: {TOPICS[i % 6]}"}
            for i in range(300)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    settings = llm_settings(tmp_path, db, fake_llm, llm_timeout_s=TIMEOUT_S, llm_concurrency=8,
                            llm_breaker_failures=0)  # per-item fault reasons, no breaker
    stats = run_batch(open_engine(settings, index=index), str(source),
                      tmp_path / "out.jsonl", LLM, tty=False)
    out = read_output(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # each once, input order
    assert [r["line"] for r in out] == list(range(1, 301))
    by_kind: dict[str, Counter[str]] = {}
    for i, record in enumerate(out):
        kind = "error" if "error" in record else str(i % 10)
        reason = record["error"]["code"] if kind == "error" else record["reason"]
        by_kind.setdefault(kind, Counter())[str(reason)] += 1
    assert by_kind["error"] == {"invalid_text": 6}
    assert set(by_kind["0"]) == {"llm_failed: rate_limited"}
    assert set(by_kind["1"]) == {"llm_failed: server_error"}
    assert set(by_kind["2"]) == {"llm_failed: timeout"}
    assert set(by_kind["3"]) == set(by_kind["5"]) == {"llm_failed: invalid_answer"}
    slowed = [r for i, r in enumerate(out) if i % 10 == 4 and "error" not in r]
    assert all(r["mode"] == "llm" and r["llm_attempts"] == 2 and r["labels"] for r in slowed)
    degraded = [r for r in out if r.get("degraded")]
    assert all(r["mode"] == "retrieval" and r["candidates"] for r in degraded)
    assert stats.records == 300 and sum(stats.errors.values()) == 6
    assert sum(stats.degraded.values()) == len(degraded) and stats.prompt_tokens > 0


def sigkill_when(command: list[str], env: dict[str, str], ready: Callable[[], bool]) -> None:
    """Run `command` and SIGKILL it as soon as `ready()` holds (it must not end before)."""
    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None and not ready():
        time.sleep(0.02)
    assert victim.poll() is None, victim.stderr.read().decode() if victim.stderr else ""
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    victim.stderr.close()  # type: ignore[union-attr]


def test_sigkill_then_resume_exactly_once(tmp_path: Path, db: Path, index: LabelIndex,
                                          fake_llm: FakeOpenAI) -> None:
    fake_llm.default = Reply.labels("C01", delay_s=0.05)
    rows = [{"id": f"k{i}", "text": f"item {i}: {TOPICS[i % 6]}"} for i in range(120)]
    source, output = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABELRANK_", "OPENAI_"))}
    env.update(LABELRANK_LLM_BASE_URL=fake_llm.base_url, LABELRANK_LLM_API_KEY="test",
               LABELRANK_LLM_MODEL="fake-model", LABELRANK_LLM_MAX_ATTEMPTS="2",
               LABELRANK_LLM_MAX_WAIT_S="0.01")
    # No answer cache: the killed run cached answers it never wrote, and the rerun would
    # take them from there instead of asking (the request count below is the check).
    command = [*CLI, "batch", str(source), str(output), "--db", str(db), "--mode", "llm",
               "--concurrency", "2", "--chunk-size", "8", "--no-cache"]
    sigkill_when(command, env, lambda: output.exists()
                 and output.read_bytes().count(b"\n") >= 24)
    with output.open("ab") as handle:  # what a kill in the middle of a write leaves behind
        handle.write(b'{"line": 77, "id": "k76", "labels": [{"id": "pets')
    kept = output.read_bytes().count(b"\n")
    assert 24 <= kept < 120
    before = fake_llm.request_count
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    out = read_output(output)
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert all(r["mode"] == "llm" for r in out)
    assert fake_llm.request_count - before == 120 - kept  # done records were not redone
    assert f"{kept} already there" in done.stderr


def test_malformed_lines_become_error_records(tmp_path: Path, db: Path, index: LabelIndex,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        json.dumps({"id": 1, "text": "my kitten bites my hands"}).encode(),
        b'{"id": 2, "text": "unterminated',
        json.dumps({"id": 3, "body": "no text field"}).encode(),
        json.dumps({"id": 4, "text": "   "}).encode(),
        json.dumps({"id": 5, "text": "x" * 1_000_000}).encode(),
        b'["not", "an", "object"]',
        b'{"id": 7, "text": "caf\xe9 latte"}',
        json.dumps({"id": [8], "text": "list id"}).encode(),
        json.dumps({"id": 1, "text": "same id again"}).encode(),
        b"",
        json.dumps({"text": "how do I file my taxes", "id": None}).encode(),
        json.dumps({"id": 12, "text": 42}).encode(),
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    settings = make_settings(tmp_path, db=db)
    run_batch(open_engine(settings, index=index), str(source),
              tmp_path / "out.jsonl", RETRIEVAL, progress_every_s=0, tty=False)
    out = read_output(tmp_path / "out.jsonl")
    assert [r["line"] for r in out] == list(range(1, 13))
    codes = {r["line"]: r["error"]["code"] for r in out if "error" in r}
    assert codes == {2: "invalid_input", 3: "invalid_input", 4: "invalid_text",
                     5: "text_too_long", 6: "invalid_input", 7: "invalid_input",
                     8: "invalid_input", 9: "duplicate_id", 10: "invalid_input",
                     12: "invalid_input"}
    assert "line 2: not valid JSON" in out[1]["error"]["message"]
    assert "no 'text' field" in out[2]["error"]["message"]
    assert "not valid UTF-8" in out[6]["error"]["message"]
    assert out[0]["labels"][0]["id"] == "pets.cats" and out[0]["id"] == 1
    assert out[10]["labels"][0]["id"] == "money.taxes" and out[10]["id"] is None
    assert "batch: 12/12 records" in capsys.readouterr().err  # plain progress lines off a tty


def test_csv_and_stdin_inputs(tmp_path: Path, db: Path, index: LabelIndex,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path, db=db)
    engine = open_engine(settings, index=index)
    source = tmp_path / "in.csv"
    source.write_text('key,body\na,"my cat\nscratches the sofa"\nb,too,many\nc,file my taxes\n')
    run_batch(engine, str(source), tmp_path / "csv.jsonl",
              BatchOptions(mode="retrieval", text_field="body", id_field="key"), tty=False)
    out = read_output(tmp_path / "csv.jsonl")
    assert [(r["line"], r["id"]) for r in out] == [(2, "a"), (4, None), (5, "c")]
    assert out[0]["labels"][0]["id"] == "pets.cats" and "3 fields" in out[1]["error"]["message"]
    stdin = io.TextIOWrapper(io.BytesIO(b'{"text": "best beans for espresso"}\n'))
    monkeypatch.setattr(sys, "stdin", stdin)
    run_batch(engine, "-", tmp_path / "stdin.jsonl", RETRIEVAL, tty=False)
    assert read_output(tmp_path / "stdin.jsonl")[0]["labels"][0]["id"] == "food.coffee"


def test_resume_checks_index_and_settings(tmp_path: Path, db: Path, index: LabelIndex) -> None:
    source = write_jsonl(tmp_path / "in.jsonl",
                         [{"id": i, "text": TOPICS[i % 6]} for i in range(10)])
    output = tmp_path / "out.jsonl"
    settings = make_settings(tmp_path, db=db)
    run_batch(open_engine(settings, index=index), str(source), output, RETRIEVAL,
              tty=False)
    lines = output.read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:4]) + lines[4][:30])  # four done, one torn
    changed = make_settings(tmp_path, db=db, top_k=7)
    with pytest.raises(BatchMismatchError, match=r"top_k: 30 -> 7"):
        run_batch(open_engine(changed, index=index), str(source), output, RETRIEVAL,
                  tty=False)
    stats = run_batch(open_engine(changed, index=index), str(source), output,
                      BatchOptions(mode="retrieval", force=True), tty=False)
    assert [r["id"] for r in read_output(output)] == list(range(10))
    assert (stats.previous, stats.written) == (4, 6)
    meta = json.loads(meta_path(output).read_text())
    assert meta["config"]["settings"]["top_k"] == 7
    assert meta["history"][0]["settings"]["top_k"] == 30
    output.write_text(lines[0] + "garbage\n" + lines[1])
    with pytest.raises(CorruptOutputError, match=r"out.jsonl:2"):
        run_batch(open_engine(settings, index=index), str(source), output,
                  BatchOptions(mode="retrieval", force=True), tty=False)


def test_resume_ignores_settings_that_do_not_change_answers(tmp_path: Path, db: Path,
                                                           index: LabelIndex) -> None:
    source = write_jsonl(tmp_path / "in.jsonl",
                         [{"id": i, "text": TOPICS[i % 6]} for i in range(6)])
    output = tmp_path / "out.jsonl"
    run_batch(open_engine(make_settings(tmp_path, db=db), index=index), str(source), output,
              RETRIEVAL, tty=False)
    lines = output.read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:3]))
    upkeep = make_settings(tmp_path, db=db, compact_min_dead_slots=10, compact_dead_ratio=0.1)
    stats = run_batch(open_engine(upkeep, index=index), str(source), output, RETRIEVAL,
                      tty=False)
    assert (stats.previous, stats.written) == (3, 3)


def test_prepare_then_collect(tmp_path: Path, db: Path, index: LabelIndex,
                              fake_llm: FakeOpenAI) -> None:
    rows = [{"id": f"t{i}", "text": f"item {i}: {TOPICS[i]}"} for i in range(6)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + '{"id": "t9", "text": ""}'
                      + "\nnot json\n" + "".join(json.dumps(r) + "\n" for r in rows[3:]))
    settings = llm_settings(tmp_path, db, fake_llm)
    engine = open_engine(settings, index=index)
    output = tmp_path / "out.jsonl"
    prepared = prepare(engine, str(source), output)
    assert (prepared["items"], prepared["requests"], prepared["errors"]) == (8, 6, 2)
    requests = read_output(batch_dir(output) / "requests-001.jsonl")
    assert [r["custom_id"] for r in requests] == ["line-1", "line-2", "line-3", "line-6",
                                                  "line-7", "line-8"]
    assert {r["url"] for r in requests} == {"/v1/chat/completions"}

    fake_llm.default = Reply.labels("C01")
    online_out = tmp_path / "online.jsonl"  # the online path, answering C01 for every text
    run_batch(engine, str(source), online_out, LLM, tty=False)
    sent = sorted(fake_llm.requests, key=item_number)
    assert [r["body"] for r in requests] == sent  # byte for byte what the online path sends

    results = [{"id": f"batch_req_{i}", "custom_id": r["custom_id"], "error": None,
                "response": {"status_code": 200, "body": {
                    "choices": [{"message": {"content": json.dumps({"labels": ["C01"]})}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 5}}}}
               for i, r in enumerate(requests)]
    answers = [r["response"]["body"]["choices"][0]["message"] for r in results]
    answers[0]["content"] = "no idea, sorry"
    answers[1]["content"] = '{"labels": ["C99", "C02"]}'
    results[3] = {"custom_id": "line-6", "response": None,
                  "error": {"code": "batch_expired", "message": "not run in time"}}
    results[4]["response"] = {"status_code": 429, "body": {"error": {"message": "slow down"}}}
    del results[2]  # line-3 never came back
    results_file = tmp_path / "results.jsonl"
    results_file.write_text("".join(json.dumps(r) + "\n" for r in results) + "{broken\n")
    stats, bad = collect(engine, output, [results_file])
    out = read_output(output)
    assert bad == 1 and [r["line"] for r in out] == list(range(1, 9))
    assert [r.get("reason") for r in out[:3]] == ["llm_failed: invalid_answer", None,
                                                  "llm_failed: missing_from_results"]
    assert out[1]["dropped_ids"] == ["C99"] and out[1]["labels"][0]["id"] == \
        out[1]["candidates"][1]["id"]
    assert [out[3]["error"]["code"], out[4]["error"]["code"]] == ["invalid_text",
                                                                  "invalid_input"]
    assert [out[5]["reason"], out[6]["reason"]] == ["llm_failed: batch_expired",
                                                    "llm_failed: rate_limited"]
    assert all(out[i]["degraded"] and out[i]["mode"] == "retrieval" for i in (0, 2, 5, 6))
    online = read_output(online_out)
    assert out[7]["labels"] == online[7]["labels"] and out[7]["mode"] == "llm"
    assert out[7]["usage"] == {"prompt_tokens": 100, "completion_tokens": 5}
    assert stats.records == 8 and sum(stats.errors.values()) == 2


def test_collect_refuses_another_index(tmp_path: Path, db: Path, index: LabelIndex,
                                       fake_llm: FakeOpenAI) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": TOPICS[0]}])
    settings = llm_settings(tmp_path, db, fake_llm)
    output = tmp_path / "out.jsonl"
    prepare(open_engine(settings, index=index), str(source), output)
    other = llm_settings(tmp_path, db, fake_llm, max_labels=2)
    with pytest.raises(BatchMismatchError, match="max_labels: 5 -> 2"):
        collect(open_engine(other, index=index), output, [])


def test_summary_counts_and_cost() -> None:
    stats = Stats()
    for record in ({"error": {"code": "invalid_text"}},
                   {"degraded": True, "reason": "llm_failed: timeout", "usage": {}},
                   {"usage": {"prompt_tokens": 2_000_000, "completion_tokens": 100_000}}):
        stats.count(record)
        stats.written += 1
    prices = {"m": (0.15, 0.60)}
    assert estimate_cost(stats, "m", prices) == pytest.approx(0.36)
    assert estimate_cost(stats, "m", prices, discount=0.5) == pytest.approx(0.18)
    assert estimate_cost(stats, "other", prices) is None
    text = summary(stats, "m", prices)
    assert "3 records" in text and "invalid_text 1" in text and "llm_failed: timeout 1" in text
    assert "$0.3600" in text


def test_llm_mode_without_endpoint_fails_before_writing(tmp_path: Path, db: Path,
                                                        index: LabelIndex) -> None:
    settings = make_settings(tmp_path, db=db)
    engine = open_engine(settings, index=index)
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    with pytest.raises(NoLLMConfigured, match="LABELRANK_LLM_BASE_URL"):
        run_batch(engine, str(source), tmp_path / "out.jsonl", LLM)
    assert not (tmp_path / "out.jsonl").exists()
