"""Sharded batch runs without Ray: the plan, the worker class in-process, the manifest, merging."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.cli import app
from retrieval.catalog import load_catalog
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.index import LabelIndex, chroma_client
from service.batch.io import CorruptOutputError, read_records
from service.batch.manifest import OutputBusyError, file_lock, open_output, read_done
from service.batch.merge import UnfinishedRunError, merge_parts
from service.batch.ray_run import RayOptions, WorkerCountError, worker_count, worker_settings
from service.batch.run import BatchOptions, run_batch
from service.batch.shard_worker import ShardWorker
from service.batch.shards import plan_shards, shard_records
from service.batch.sidecar import BatchMismatchError, run_config
from service.engine import open_engine
from tests.conftest import MINI_CATALOG, make_settings

RETRIEVAL = BatchOptions(mode="retrieval")
TOPICS = ["my cat scratches the sofa", "when is my tax return due", "my sourdough did not rise",
          "espresso tastes sour", "how do I walk a puppy on a leash", "tracking grocery spending"]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> Path:
    db = tmp_path_factory.mktemp("shards") / "db"
    LabelIndex(chroma_client(db), embedder).sync(load_catalog(MINI_CATALOG))
    return db


def lines_with_faults(count: int) -> bytes:
    """JSONL with a bad line, a blank line, a missing text and repeated ids among good rows."""
    rows = [json.dumps({"id": f"r{i}", "text": TOPICS[i % 6]}).encode() for i in range(count)]
    rows[3] = b'{"id": "r3", "text": "unterminated'
    rows[7] = b""
    rows[8] = json.dumps({"id": "r8", "body": "no text"}).encode()
    rows[11] = json.dumps({"id": "r9", "text": "r9 again, same shard"}).encode()
    rows[15] = json.dumps({"id": "r1", "text": "r1 again, another shard"}).encode()
    return b"\n".join(rows)  # and no newline at the end


def label_all(db: Path, source: Path, out: Path, candidates: bool = True) -> None:
    """Every shard labeled by one in-process worker, as the Ray driver would have them."""
    settings = make_settings(out.parent, db=db)
    engine = open_engine(settings)
    options = BatchOptions(mode="retrieval", candidates=candidates)
    config = run_config(engine, "retrieval", "ray", "text", "id")
    sharded = open_output(out, source, "auto", 6, config, force=False)
    worker = ShardWorker(settings, config, options)
    for shard in sharded.shards:
        sharded.mark_done(shard, worker.label_shard(shard, sharded.part(shard))[1])
    worker.close()


def test_shards_read_like_the_whole_file(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(lines_with_faults(17))
    shards = plan_shards(source, "auto", 6)
    assert [(s.first_line, s.lines) for s in shards] == [(1, 6), (7, 6), (13, 5)]
    pieces = []
    for shard in shards:
        with shard_records(shard, "text", "id") as records:
            pieces += list(records)
    with source.open("rb") as handle:
        whole = list(read_records(handle, "jsonl"))
    same_shard_repeat = next(r for r in whole if r.line == 12)
    assert same_shard_repeat.error["code"] == "duplicate_id"
    # A worker sees one shard: the id repeated across shards (line 16) is caught at merge.
    assert [r for r in pieces if r.line != 16] == [r for r in whole if r.line != 16]
    assert [r.line for r in pieces] == list(range(1, 18))


def test_directory_input_csv_whole_hidden_skipped(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    (root / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TOPICS))
    (root / "b" / "c.csv").write_text('id,text\n1,"two\nlines"\n2,plain\n')
    (root / ".hidden.jsonl").write_text('{"text": "skip me"}\n')
    (root / "notes.txt").write_text("not an input\n")
    shards = plan_shards(root, "auto", 4)
    assert [(s.file, s.fmt, s.first_line, s.lines) for s in shards] == [
        ("a.jsonl", "jsonl", 1, 4), ("a.jsonl", "jsonl", 5, 2), ("b/c.csv", "csv", 1, None)]
    with shard_records(shards[2], "text", "id") as records:
        assert [(r.line, r.text) for r in records] == [(2, "two\nlines"), (4, "plain")]


def test_worker_parts_merge_to_the_local_output(tmp_path: Path, db: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(lines_with_faults(17))
    label_all(db, source, tmp_path / "out")
    assert merge_parts(tmp_path / "out", tmp_path / "merged.jsonl") == 1
    run_batch(open_engine(make_settings(tmp_path, db=db)), str(source),
              tmp_path / "local.jsonl", RETRIEVAL, tty=False)
    merged, local = (read(tmp_path / name) for name in ("merged.jsonl", "local.jsonl"))
    assert merged == local and len(merged) == 17
    assert merged[15]["error"]["message"] == "line 16: id 'r1' already appeared on line 2"
    part = read(tmp_path / "out" / "parts" / "00000.jsonl")
    assert {r["line"]: r["error"]["code"] for r in part if "error" in r} == {
        4: "invalid_input"}  # the bad line is an error record in its own shard


def test_shard_resumes_per_record(tmp_path: Path, db: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": TOPICS[i % 6]}) + "\n"
                              for i in range(10)))
    settings = make_settings(tmp_path, db=db)
    config = run_config(open_engine(settings), "retrieval", "ray", "text", "id")
    sharded = open_output(tmp_path / "out", source, "auto", 100, config, force=False)
    [shard], part = sharded.shards, sharded.part(sharded.shards[0])
    worker = ShardWorker(settings, config, BatchOptions(mode="retrieval", chunk_size=3))
    worker.label_shard(shard, part)
    full = part.read_text().splitlines(keepends=True)
    part.write_text("".join(full[:4]) + full[4][:25])  # four records and a torn fifth
    _, stats = worker.label_shard(shard, part)
    assert (stats.previous, stats.written) == (4, 6)
    assert [r["id"] for r in read(part)] == list(range(10))
    _, again = worker.label_shard(shard, part)
    assert (again.previous, again.written) == (10, 0)
    worker.close()


def test_worker_refuses_another_index_or_settings(tmp_path: Path, db: Path) -> None:
    settings = make_settings(tmp_path, db=db)
    driver = run_config(open_engine(make_settings(tmp_path, db=db, top_k=7)), "retrieval",
                        "ray", "text", "id")
    worker = ShardWorker(settings, driver, RETRIEVAL)
    with pytest.raises(BatchMismatchError, match=r"settings.top_k: 7 -> 30"):
        worker.start()


def test_manifest_keeps_plan_and_refuses_changed_input(tmp_path: Path, db: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(lines_with_faults(17))
    label_all(db, source, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]
    again = open_output(tmp_path / "out", source, "auto", 2, config, force=False)
    assert len(again.shards) == 3 and set(again.done) == {0, 1, 2}  # the first plan holds
    with (tmp_path / "out" / "done.jsonl").open("ab") as handle:
        handle.write(b'{"shard": 9, "st')  # torn by a kill
    assert set(read_done(tmp_path / "out" / "done.jsonl")) == {0, 1, 2}
    assert (tmp_path / "out" / "done.jsonl").read_bytes().endswith(b"}\n")
    with pytest.raises(BatchMismatchError, match=r"settings.top_k: 30 -> 5"):
        open_output(tmp_path / "out", source, "auto", 6,
                    {**config, "settings": {**config["settings"], "top_k": 5}}, force=False)
    with source.open("ab") as handle:
        handle.write(b'\n{"text": "one more"}\n')
    with pytest.raises(BatchMismatchError, match="changed since this output was planned"):
        open_output(tmp_path / "out", source, "auto", 6, config, force=False)


def test_merge_refuses_an_unfinished_run(tmp_path: Path, db: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(lines_with_faults(17))
    label_all(db, source, tmp_path / "out", candidates=False)
    done = tmp_path / "out" / "done.jsonl"
    lines = done.read_text().splitlines(keepends=True)
    done.write_text("".join(lines[:2]))
    with pytest.raises(UnfinishedRunError, match="1 of 3 shards are not finished"):
        merge_parts(tmp_path / "out", tmp_path / "merged.jsonl")
    done.write_text("".join(lines))
    with (tmp_path / "out" / "parts" / "00001.jsonl").open("ab") as handle:
        handle.write(b'{"line": 13, "id": "r')  # never left by a worker; a hand edit
    with pytest.raises(CorruptOutputError, match=r"00001.jsonl:7: not a labelrank batch"):
        merge_parts(tmp_path / "out", tmp_path / "merged.jsonl")
    assert not (tmp_path / "merged.jsonl").exists()


def test_part_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    lock = tmp_path / "00000.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(OutputBusyError, match="shard 00000 is being written"), \
                file_lock(lock, 0.3, "shard 00000"):
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    with file_lock(lock, 5.0):
        pass


def test_llm_concurrency_is_shared_not_multiplied(tmp_path: Path) -> None:
    auto, settings = RayOptions(), make_settings(tmp_path, llm_concurrency=8)
    assert worker_count(64, auto, shards=1000, mode="retrieval", llm_concurrency=8) == 64
    assert worker_count(64, auto, shards=1000, mode="llm", llm_concurrency=8) == 8
    assert worker_count(64, RayOptions(cpus_per_worker=4), 1000, "retrieval", 8) == 16
    assert worker_count(64, auto, shards=3, mode="retrieval", llm_concurrency=8) == 3
    with pytest.raises(WorkerCountError, match="at least 12"):
        worker_count(64, RayOptions(workers=12), 1000, "llm", llm_concurrency=8)
    with pytest.raises(WorkerCountError, match="3 workers of 2 CPUs need 6 CPUs; the cluster "
                                               "has 4"):
        worker_count(4, RayOptions(workers=3, cpus_per_worker=2), 1000, "retrieval", 8)
    shares = [worker_settings(settings, "llm", n, 1).llm_concurrency for n in (1, 3, 8)]
    assert [n * share for n, share in zip((1, 3, 8), shares, strict=True)] == [8, 6, 8]
    assert worker_settings(settings, "retrieval", 4, 2).embed_threads == 2


def read(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record.pop("latency_ms", None)
    return records


def test_cli_keeps_ray_options_to_the_ray_engine(tmp_path: Path, db: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "espresso tastes sour"}\n')
    runner = CliRunner()
    local = runner.invoke(app, ["batch", str(source), str(tmp_path / "out.jsonl"), "--db",
                                str(db), "--workers", "2", "--merge", "m.jsonl"])
    assert local.exit_code == 2 and "--workers, --merge go with --engine ray" in local.output
    stdin = runner.invoke(app, ["batch", "-", str(tmp_path / "out"), "--db", str(db),
                                "--engine", "ray"], input='{"text": "x"}\n')
    assert stdin.exit_code == 2
    assert "error [invalid_input]: --engine ray reads files" in stdin.output
    assert not (tmp_path / "out").exists()
