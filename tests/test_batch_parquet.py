"""Parquet in and out of `labelrank batch` (local engine): real MiniLM, Chroma, fake LLM."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.cli import app
from retrieval.catalog import load_catalog
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.index import LabelIndex, chroma_client
from service.batch.io import UnsupportedFormatError, resolve_format
from service.batch.parquet_output import journal_path, parquet_records, write_parquet
from service.batch.run import BatchOptions, run_batch
from service.engine import open_engine
from tests.conftest import MINI_CATALOG, make_settings
from tests.fake_openai import FakeOpenAI, Reply
from tests.test_batch import CLI, TOPICS, sigkill_when

pa = pytest.importorskip("pyarrow", reason="pyarrow is the `parquet` extra")
pq = pytest.importorskip("pyarrow.parquet")



@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> Path:
    db = tmp_path_factory.mktemp("parquet") / "db"
    LabelIndex(chroma_client(db), embedder).sync(load_catalog(MINI_CATALOG))
    return db


def faulty_table(count: int) -> pa.Table:
    """`doc_id` (int) and `body` columns: a null body, a blank one, a too long one, a repeated
    id, a null id, among good rows; two row groups."""
    ids: list[int | None] = list(range(100, 100 + count))
    bodies: list[str | None] = [f"{TOPICS[i % 6]} ({i})" for i in range(count)]
    bodies[2], bodies[4], bodies[6] = None, "   ", "x" * 1_000_000
    ids[9], ids[11] = 101, None
    return pa.table({"doc_id": pa.array(ids, pa.int64()), "body": bodies,
                     "other": ["ignored"] * count})


def jsonl_of(table: pa.Table, path: Path) -> Path:
    """The same rows as JSONL, null fields left out (as a JSONL writer would)."""
    path.write_text("".join(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n"
                            for row in table.to_pylist()))
    return path


def plain(value: object) -> object:
    """A record with null fields dropped: Parquet has a column for every field of any record."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()
                if v is not None and k not in ("latency_ms", "message")}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_parquet_in_and_out_give_the_jsonl_records(tmp_path: Path, db: Path) -> None:
    table = faulty_table(30)
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=16)
    engine = open_engine(make_settings(tmp_path, db=db))
    options = BatchOptions(mode="retrieval", text_field="body", id_field="doc_id")
    stats = run_batch(engine, str(tmp_path / "in.parquet"), tmp_path / "out.parquet", options,
                      tty=False)
    run_batch(engine, str(jsonl_of(table, tmp_path / "in.jsonl")), tmp_path / "out.jsonl",
              options, tty=False)

    out = list(parquet_records(tmp_path / "out.parquet"))
    assert stats.records == 30 and stats.total == 30
    assert [r["line"] for r in out] == list(range(1, 31))  # rows count as lines, from 1
    assert [r["id"] for r in out][:3] == [100, 101, 102]  # integer ids stay integers
    errors = {r["line"]: r["error"]["code"] for r in out if r["error"]}
    assert errors == {3: "invalid_input", 5: "invalid_text", 7: "text_too_long",
                      10: "duplicate_id"}
    assert "field 'body' is null" in out[2]["error"]["message"]
    assert out[11]["id"] is None and out[11]["labels"]  # no id: known by its row
    assert [plain(r) for r in out] == [plain(r) for r in read_jsonl(tmp_path / "out.jsonl")] \
        != []
    assert not journal_path(tmp_path / "out.parquet").exists()
    assert pq.ParquetFile(tmp_path / "out.parquet").schema_arrow.field("labels").type \
        .value_type.get_field_index("score") >= 0  # nested, not JSON text


def test_missing_column_and_not_parquet_are_refused_before_writing(tmp_path: Path,
                                                                    db: Path) -> None:
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "in.parquet")
    engine = open_engine(make_settings(tmp_path, db=db))
    with pytest.raises(Exception, match="no 'body' column") as caught:
        run_batch(engine, str(tmp_path / "in.parquet"), tmp_path / "out.jsonl",
                  BatchOptions(mode="retrieval", text_field="body"), tty=False)
    assert getattr(caught.value, "code", None) == "invalid_input"
    fake = tmp_path / "fake.parquet"
    fake.write_text('{"text": "a JSONL line in a .parquet name"}\n')
    with pytest.raises(UnsupportedFormatError, match="not a Parquet file"):
        resolve_format(str(fake), "auto")
    cut = tmp_path / "cut.parquet"
    cut.write_bytes((tmp_path / "in.parquet").read_bytes()[:-12] + b"PAR1")
    with pytest.raises(UnsupportedFormatError, match="footer cannot be read"):
        resolve_format(str(cut), "auto")
    with pytest.raises(UnsupportedFormatError, match="stdin"):
        resolve_format("-", "parquet")


def test_an_undecodable_row_group_gives_one_error_per_row(tmp_path: Path, db: Path) -> None:
    rows = [f"{TOPICS[i % 6]} number {i}" for i in range(40)]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": rows}), source, row_group_size=20, compression="snappy")
    column = pq.ParquetFile(source).metadata.row_group(1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(source.read_bytes())
    size = column.total_compressed_size
    data[start + size // 4:start + size * 3 // 4] = b"\xff" * (size * 3 // 4 - size // 4)
    source.write_bytes(bytes(data))
    stats = run_batch(open_engine(make_settings(tmp_path, db=db)), str(source),
                      tmp_path / "out.jsonl", BatchOptions(mode="retrieval"), tty=False)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["line"] for r in out] == list(range(1, 41))  # nothing dropped
    assert all("labels" in r for r in out[:20])
    assert {r["error"]["code"] for r in out[20:]} == {"invalid_input"}
    assert "row group 1 of the Parquet file cannot be read" in out[20]["error"]["message"]
    assert stats.errors == {"invalid_input": 20}


def test_sigkill_then_resume_writes_each_row_once(tmp_path: Path, db: Path,
                                                  fake_llm: FakeOpenAI) -> None:
    fake_llm.default = Reply.labels("C01", delay_s=0.05)
    ids = [f"k{i}" for i in range(96)]
    pq.write_table(pa.table({"key": ids, "text": [f"item {i}: {TOPICS[i % 6]}"
                                                  for i in range(96)]}),
                   tmp_path / "in.parquet", row_group_size=40)
    output = tmp_path / "out.parquet"
    journal = journal_path(output)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABELRANK_", "OPENAI_"))}
    env.update(LABELRANK_LLM_BASE_URL=fake_llm.base_url, LABELRANK_LLM_API_KEY="test",
               LABELRANK_LLM_MODEL="fake-model", LABELRANK_LLM_MAX_ATTEMPTS="2")
    command = [*CLI, "batch", str(tmp_path / "in.parquet"), str(output), "--db", str(db),
               "--mode", "llm", "--id-field", "key", "--concurrency", "2", "--chunk-size", "8",
               "--no-cache"]
    sigkill_when(command, env, lambda: journal.exists()
                 and journal.read_bytes().count(b"\n") >= 24)
    assert not output.exists()  # nothing is written to OUTPUT until every row is done
    with journal.open("ab") as handle:  # a write the kill cut short
        handle.write(b'{"line": 77, "id": "k76", "labels": [{"id": "pe')
    kept = journal.read_bytes().count(b"\n")
    assert 24 <= kept < 96
    before = fake_llm.request_count
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert f"({96 - kept} written now, {kept} already there)" in done.stderr
    assert fake_llm.request_count - before == 96 - kept  # done rows were not asked again
    out = list(parquet_records(output))
    assert [r["id"] for r in out] == ids and all(r["mode"] == "llm" for r in out)
    assert not journal.exists()

    # Killed after OUTPUT was renamed into place but before the journal was removed: the
    # journal's rows are in OUTPUT already; a rerun removes it and labels nothing.
    journal.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl_records(out[-8:])))
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                           check=False)
    assert again.returncode == 0, again.stderr
    assert "(0 written now, 96 already there)" in again.stderr
    assert [r["id"] for r in parquet_records(output)] == ids and not journal.exists()
    assert fake_llm.request_count - before == 96 - kept


def read_jsonl_records(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if v is not None} for r in records]


def test_rows_added_to_a_finished_output_are_appended_in_order(tmp_path: Path,
                                                               db: Path) -> None:
    engine = open_engine(make_settings(tmp_path, db=db))
    options = BatchOptions(mode="retrieval")
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": TOPICS[:3]}), source)
    run_batch(engine, str(source), tmp_path / "out.parquet", options, tty=False)
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "text": TOPICS[:4]}), source)  # a row more
    stats = run_batch(engine, str(source), tmp_path / "out.parquet", options, tty=False)
    assert (stats.previous, stats.written) == (3, 1)
    assert [r["id"] for r in parquet_records(tmp_path / "out.parquet")] == [1, 2, 3, 4]


def test_ids_of_both_kinds_are_written_as_strings(tmp_path: Path) -> None:
    records = [{"line": 1, "id": 7, "labels": []}, {"line": 2, "id": "x", "labels": []}]
    assert write_parquet(tmp_path / "o.parquet", [lambda: records]) == 2
    assert [r["id"] for r in parquet_records(tmp_path / "o.parquet")] == ["7", "x"]


def test_cli_reads_parquet_and_names_its_columns(tmp_path: Path, readonly_db: Path,
                                                 readonly_index: LabelIndex) -> None:
    pq.write_table(pa.table({"ref": ["a", "b"], "body": ["refund please", "weather"]}),
                   tmp_path / "in.parquet")
    unset: dict[str, str | None] = {k: None for k in os.environ
                                    if k.startswith(("LABELRANK_", "OPENAI_"))}
    done = CliRunner().invoke(app, ["batch", str(tmp_path / "in.parquet"),
                                    str(tmp_path / "out.jsonl"), "--db", str(readonly_db),
                                    "--mode", "retrieval", "--text-field", "body",
                                    "--id-field", "ref"], env=unset)
    assert done.exit_code == 0, done.output
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["a", "b"]
    refused = CliRunner().invoke(app, ["batch", str(tmp_path / "in.parquet"),
                                       str(tmp_path / "o.parquet"), "--db", str(readonly_db),
                                       "--engine", "ray"], env=unset)
    assert refused.exit_code == 2 and "--merge OUT.parquet" in refused.output
