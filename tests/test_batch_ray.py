"""Batch labeling on real Ray (a local cluster of 2 CPUs per module), real MiniLM and Chroma."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrieval.catalog import load_catalog
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.index import LabelIndex, chroma_client
from service.batch.manifest import read_done
from service.batch.merge import merge_parts
from service.batch.parquet_output import parquet_records
from service.batch.ray_run import RayOptions, ShardFailedError, run_batch_ray
from service.batch.report import summary
from service.batch.run import BatchOptions, run_batch
from service.engine import open_engine
from tests.conftest import MINI_CATALOG, make_settings
from tests.fake_openai import FakeOpenAI, Reply
from tests.test_batch_parquet import faulty_table, plain
from tests.test_batch_shards import TOPICS, lines_with_faults, read
from tests.test_determinism import HashEmbedder
from tests.test_determinism import catalog as determinism_catalog

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="Ray is the `ray` extra: pip install -e '.[ray]'")

CLI = [sys.executable, "-c", "from eval.cli import main; main()"]
TWO_WORKERS = RayOptions(workers=2, shard_size=12)


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[str]:
    """One local Ray for the module (starting one takes seconds); yields its address."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> Path:
    db = tmp_path_factory.mktemp("ray") / "db"
    LabelIndex(chroma_client(db), embedder).sync(load_catalog(MINI_CATALOG))
    return db


class Tracked:
    """A fake-LLM responder that answers C01 after `delay_s` and keeps the peak concurrency."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.now, self.peak = delay_s, 0, 0
        self._lock = threading.Lock()

    def __call__(self, request: dict) -> Reply:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(self.delay_s)
        with self._lock:
            self.now -= 1
        return Reply.labels("C01")


def llm_env(fake: FakeOpenAI) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABELRANK_", "OPENAI_", "RAY_ADDRESS"))}
    env.update(LABELRANK_LLM_BASE_URL=fake.base_url, LABELRANK_LLM_API_KEY="test",
               LABELRANK_LLM_MODEL="fake-model", LABELRANK_LLM_MAX_ATTEMPTS="1",
               LABELRANK_LLM_TIMEOUT_S="30")
    return env


def write_rows(path: Path, count: int) -> list[dict]:
    """`count` rows as JSONL, or as Parquet when `path` is named .parquet."""
    rows = [{"id": f"k{i}", "text": f"item {i}: {TOPICS[i % 6]}"} for i in range(count)]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=20)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def llm_settings(tmp_path: Path, db: Path, fake: FakeOpenAI) -> Any:
    return make_settings(tmp_path, db=db, llm_base_url=fake.base_url, llm_api_key="test",
                         llm_model="fake-model", llm_max_attempts=1, llm_concurrency=2, top_k=5)


def part_lines(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (out / "parts").glob("*.jsonl"))


def test_same_records_as_the_local_engine(tmp_path: Path, db: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(lines_with_faults(40))  # the faults sit in the first two shards
    engine = open_engine(make_settings(tmp_path, db=db))
    run = run_batch_ray(engine, str(source), tmp_path / "out", BatchOptions(mode="retrieval"),
                        TWO_WORKERS, tty=False)
    assert run.stats.records == 40 and len(run.workers) == 2
    assert sum(run.stats.errors.values()) == 4  # bad JSON, blank, no text, same-shard repeat
    first = read(tmp_path / "out" / "parts" / "00000.jsonl")
    assert [r["error"]["code"] for r in first if "error" in r] == ["invalid_input"] * 3 + [
        "duplicate_id"]
    assert merge_parts(tmp_path / "out", tmp_path / "merged.jsonl") == 1
    run_batch(engine, str(source), tmp_path / "local.jsonl", BatchOptions(mode="retrieval"),
              tty=False)
    assert read(tmp_path / "merged.jsonl") == read(tmp_path / "local.jsonl")


def test_same_labels_and_scores_on_an_approximate_graph_at_the_niceness_asked(
        tmp_path: Path) -> None:
    # 4,880 vectors, where the graph search is approximate: workers searching copies of the
    # index give every label and score of the process that wrote it (not so before every
    # write was persisted: Chroma rebuilt its unpersisted tail in each process's own order).
    db = tmp_path / "db"
    LabelIndex(chroma_client(db), HashEmbedder()).sync(determinism_catalog())
    write_rows(tmp_path / "in.jsonl", 60)
    engine = open_engine(make_settings(tmp_path, db=db))
    run = run_batch_ray(engine, str(tmp_path / "in.jsonl"), tmp_path / "out",
                        BatchOptions(mode="retrieval"),
                        RayOptions(workers=2, shard_size=30, worker_niceness=19), tty=False)
    assert [w["niceness"] for w in run.workers] == [19, 19]  # up from Ray's 15: no privilege
    merge_parts(tmp_path / "out", tmp_path / "merged.jsonl")
    run_batch(engine, str(tmp_path / "in.jsonl"), tmp_path / "local.jsonl",
              BatchOptions(mode="retrieval"), tty=False)
    assert read(tmp_path / "merged.jsonl") == read(tmp_path / "local.jsonl")


@pytest.mark.parametrize("name", ["in.jsonl", "in.parquet"])
def test_killed_worker_redoes_only_its_unwritten_records(tmp_path: Path, db: Path,
                                                         fake_llm: FakeOpenAI,
                                                         name: str) -> None:
    fake_llm.default = answer = Tracked(delay_s=0.15)
    rows = write_rows(tmp_path / name, 48)
    settings = llm_settings(tmp_path, db, fake_llm)
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            outcome["run"] = run_batch_ray(
                open_engine(settings), str(tmp_path / name), tmp_path / "out",
                BatchOptions(mode="llm", chunk_size=4), TWO_WORKERS, tty=False)
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    driver = threading.Thread(target=drive)
    driver.start()
    kill_mid_shard(driver)  # Ray restarts the worker and retries its shard
    driver.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    run = outcome["run"]
    assert merge_parts(tmp_path / "out", tmp_path / "merged.jsonl") == 0
    merged = read(tmp_path / "merged.jsonl")
    assert [r["id"] for r in merged] == [r["id"] for r in rows]  # each once, in input order
    assert all(r["mode"] == "llm" for r in merged)
    assert run.stats.previous >= 4  # the retried shard kept what the killed worker wrote
    redone = fake_llm.request_count - len(rows)
    assert 0 <= redone <= 3 * 4  # at most the chunks in flight when it died
    assert answer.peak <= 2  # the cluster-wide bound, not 2 per worker


def test_shard_out_of_retries_fails_the_run_and_a_rerun_finishes(
        tmp_path: Path, db: Path, fake_llm: FakeOpenAI) -> None:
    fake_llm.default = Tracked(delay_s=0.15)
    rows = write_rows(tmp_path / "in.jsonl", 48)
    settings = llm_settings(tmp_path, db, fake_llm)
    options = BatchOptions(mode="llm", chunk_size=4)
    failed: list[Exception] = []

    def drive() -> None:
        no_retries = RayOptions(workers=2, shard_size=12, task_retries=0)
        try:
            run_batch_ray(open_engine(settings), str(tmp_path / "in.jsonl"), tmp_path / "out",
                          options, no_retries, tty=False)
        except ShardFailedError as exc:
            failed.append(exc)

    driver = threading.Thread(target=drive)
    driver.start()
    kill_mid_shard(driver)
    driver.join(timeout=300)
    assert failed and "shards are done and kept" in failed[0].message
    done = len(read_done(tmp_path / "out" / "done.jsonl"))
    assert 1 <= done < 4  # the other worker's shard finished; nothing new was started
    rerun = run_batch_ray(open_engine(settings), str(tmp_path / "in.jsonl"), tmp_path / "out",
                          options, TWO_WORKERS, tty=False)
    assert rerun.stats.records == len(rows) and rerun.stats.previous >= 12 * done
    merge_parts(tmp_path / "out", tmp_path / "merged.jsonl")
    assert [r["id"] for r in read(tmp_path / "merged.jsonl")] == [r["id"] for r in rows]


def kill_mid_shard(driver: threading.Thread) -> None:
    """`ray.kill` a worker of the running batch once it has written part of a 12-line shard."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.is_alive():
        for name in ray.util.list_named_actors():
            if name.startswith("labelrank-batch-"):
                actor = ray.get_actor(name)
                try:
                    now = ray.get(actor.progress.remote(), timeout=10)
                except ray.exceptions.GetTimeoutError:
                    # A worker still loading the embedder at Ray's niceness 15 on a busy machine
                    # can take longer to answer (seen with the cores shared): ask again.
                    continue
                if now is not None and 4 <= now[1] < 12:
                    ray.kill(actor, no_restart=False)
                    return
        time.sleep(0.02)
    raise AssertionError("no worker was seen in the middle of a shard")


def test_driver_sigkill_then_rerun_exactly_once(tmp_path: Path, db: Path, fake_llm: FakeOpenAI,
                                                ray_session: str) -> None:
    fake_llm.default = Tracked(delay_s=0.2)  # slow enough that the kill lands mid-run
    rows = write_rows(tmp_path / "in.jsonl", 96)
    out, merged = tmp_path / "out", tmp_path / "merged.jsonl"
    command = [*CLI, "batch", str(tmp_path / "in.jsonl"), str(out), "--db", str(db),
               "--mode", "llm", "--engine", "ray", "--address", ray_session, "--workers", "2",
               "--concurrency", "2", "--shard-size", "12", "--chunk-size", "4",
               "--merge", str(merged), "--no-cache"]  # cached in-flight answers: not asked
    log = (tmp_path / "victim.log").open("wb")
    victim = subprocess.Popen(command, env=llm_env(fake_llm), stdout=log, stderr=log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and victim.poll() is None:
        done = out / "done.jsonl"
        if done.exists() and done.read_bytes().count(b"\n") >= 1 and part_lines(out) >= 20:
            break
        time.sleep(0.02)
    assert victim.poll() is None, (tmp_path / "victim.log").read_text()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    log.close()
    settled, last = 0, -1
    while settled < 6:  # its workers die with it: wait until the parts stop growing
        time.sleep(0.5)
        now = part_lines(out)
        settled, last = (settled + 1, now) if now == last else (0, now)
    finished = read_done(out / "done.jsonl")
    unfinished = [p for p in sorted((out / "parts").glob("*.jsonl"))
                  if int(p.stem) not in finished]
    with unfinished[0].open("ab") as handle:
        handle.write(b'{"line": 95, "id": "k94", "labels": [{"id": "pe')  # a torn write
    kept = part_lines(out)
    assert 20 <= kept < len(rows), f"{kept} records kept, {len(finished)} shards done"
    before = fake_llm.request_count
    rerun = subprocess.run(command, env=llm_env(fake_llm), capture_output=True, text=True,
                           timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert [r["id"] for r in read(merged)] == [r["id"] for r in rows]
    assert fake_llm.request_count - before == len(rows) - kept  # only unfinished work redone
    assert f"({len(rows) - kept} written now, {kept} already there)" in rerun.stderr


def test_parquet_in_and_merged_parquet_out_give_the_local_records(tmp_path: Path,
                                                                  db: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(faulty_table(30), tmp_path / "in.parquet", row_group_size=8)
    options = BatchOptions(mode="retrieval", text_field="body", id_field="doc_id")
    engine = open_engine(make_settings(tmp_path, db=db))
    run = run_batch_ray(engine, str(tmp_path / "in.parquet"), tmp_path / "out", options,
                        RayOptions(workers=2, shard_size=8), tty=False)
    assert run.stats.records == 30 and run.stats.total == 30
    # Row 10 repeats the id of row 2 in another shard: a duplicate_id record once merged.
    assert merge_parts(tmp_path / "out", tmp_path / "merged.parquet") == 1
    run_batch(engine, str(tmp_path / "in.parquet"), tmp_path / "local.parquet", options,
              tty=False)
    merged = [plain(r) for r in parquet_records(tmp_path / "merged.parquet")]
    assert merged == [plain(r) for r in parquet_records(tmp_path / "local.parquet")]
    assert [r["line"] for r in merged] == list(range(1, 31))
    assert [r["error"]["code"] for r in merged if "error" in r] == [
        "invalid_input", "invalid_text", "text_too_long", "duplicate_id"]


def test_a_second_run_takes_every_answer_from_the_one_cache(tmp_path: Path, db: Path,
                                                            fake_llm: FakeOpenAI) -> None:
    fake_llm.default = Tracked(delay_s=0.0)
    rows = write_rows(tmp_path / "in.jsonl", 24)
    options = BatchOptions(mode="llm", chunk_size=4, cache_dir=tmp_path / "cache")
    engine = open_engine(llm_settings(tmp_path, db, fake_llm))
    first = run_batch_ray(engine, str(tmp_path / "in.jsonl"), tmp_path / "one", options,
                          TWO_WORKERS, tty=False)
    assert fake_llm.request_count == len(rows) and first.stats.cached_answers == 0
    # Both workers wrote to the one store (one shard each at least), through its actor.
    second = run_batch_ray(engine, str(tmp_path / "in.jsonl"), tmp_path / "two", options,
                           TWO_WORKERS, tty=False)
    assert fake_llm.request_count == len(rows)  # not one request more
    assert second.stats.cached_answers == len(rows) and len(second.workers) == 2
    assert second.stats.cached_usage.prompt_tokens > 0
    assert f"LLM answers from the cache: {len(rows)} (no request;" in summary(
        second.stats, "fake-model", {})
    merge_parts(tmp_path / "one", tmp_path / "one.jsonl")
    merge_parts(tmp_path / "two", tmp_path / "two.jsonl")
    assert [r["labels"] for r in read(tmp_path / "one.jsonl")] == [
        r["labels"] for r in read(tmp_path / "two.jsonl")]
    assert all(r["mode"] == "llm" and r["llm_attempts"] == 0
               for r in read(tmp_path / "two.jsonl"))
