"""A batch input whose bytes are not the format its name (or --input-format) says is refused at
once, with one error."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.cli import app
from retrieval.index import LabelIndex
from service.batch.io import UnsupportedFormatError, resolve_format
from service.batch.shards import plan_shards


def parquet(path: Path) -> Path:
    pa = pytest.importorskip("pyarrow", reason="pyarrow is the `parquet` extra")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b"], "text": ["refund please", "weather"]}), path)
    return path


def test_parquet_and_gzip_are_refused_by_content(tmp_path: Path) -> None:
    assert resolve_format(str(parquet(tmp_path / "in.parquet")), "auto") == "parquet"
    with pytest.raises(UnsupportedFormatError, match=r"a Parquet file, not JSONL text.*name it "
                                                     r"\.parquet or pass --input-format parquet"):
        resolve_format(str(parquet(tmp_path / "in.jsonl")), "auto")
    packed = tmp_path / "in.jsonl"  # the name says JSONL; the bytes say otherwise
    packed.write_bytes(gzip.compress(b'{"text": "x"}\n'))
    with pytest.raises(UnsupportedFormatError, match="gzip data"):
        resolve_format(str(packed), "jsonl")
    with pytest.raises(UnsupportedFormatError, match="gzip data"):
        plan_shards(packed, "auto", 10)


def test_text_with_a_bad_line_is_still_read_record_by_record(tmp_path: Path) -> None:
    text = tmp_path / "in.txt"
    text.write_bytes(b'{"text": "fine"}\n\xff\xfe not utf-8\n')
    assert resolve_format(str(text), "auto") == "jsonl"
    assert resolve_format("-", "auto") == "jsonl"


def test_cli_refuses_parquet_named_jsonl_with_one_line_and_writes_nothing(
        tmp_path: Path, readonly_db: Path, readonly_index: LabelIndex) -> None:
    out = tmp_path / "out.jsonl"
    unset: dict[str, str | None] = {k: None for k in os.environ
                                    if k.startswith(("LABELRANK_", "OPENAI_"))}
    done = CliRunner().invoke(app, ["batch", str(parquet(tmp_path / "in.jsonl")), str(out),
                                    "--db", str(readonly_db), "--mode", "retrieval"], env=unset)
    assert done.exit_code == 2, done.output
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error [unsupported_format]:"), done.stderr
    assert not out.exists()
