"""The `labelrank` command tree in-process (CliRunner): index, classify, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from eval.cli import app
from tests.conftest import MINI_CATALOG


def run(*args: str, stdin: str = "", db: Path) -> Result:
    unset: dict[str, str | None] = {k: None for k in os.environ
                                    if k.startswith(("LABELRANK_", "OPENAI_"))}
    return CliRunner().invoke(app, [*args, "--db", str(db)], input=stdin, env=unset)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("cli") / "db"
    done = run("index", str(MINI_CATALOG), db=db)
    assert done.exit_code == 0, done.stderr
    assert "labels: +9" in done.stderr
    return db


def test_reindex_reports_nothing_changed(db: Path) -> None:
    done = run("index", str(MINI_CATALOG), db=db)
    assert done.exit_code == 0 and "+0 ~0 -0 =9" in done.stderr


def test_classify_args_one_json_line_each(db: Path) -> None:
    done = run("classify", "my cat scratches everything", "when are taxes due",
               "--mode", "retrieval", db=db)
    assert done.exit_code == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["labels"][0]["id"] for r in lines] == ["pets.cats", "money.taxes"]
    assert all(r["mode"] == "retrieval" and r["degraded"] is False for r in lines)


def test_classify_stdin_keeps_every_line(db: Path) -> None:
    done = run("classify", stdin="my puppy chews shoes\n\nbaking a cake\n", db=db)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 3
    assert lines[1]["error"]["code"] == "invalid_text"
    assert lines[2]["labels"][0]["id"] == "food.baking"
    assert done.exit_code == 1  # some item failed, and it says which


def test_bad_catalog_is_one_line_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "name": "A"}\n{"name": "B"}\n')
    done = run("index", str(bad), db=tmp_path / "db")
    assert done.exit_code == 2
    assert "error [invalid_catalog]: bad.jsonl:2: field 'id'" in done.stderr
    assert "Traceback" not in done.stderr


def test_llm_mode_without_endpoint_is_a_clear_error(db: Path) -> None:
    done = run("classify", "hello", "--mode", "llm", db=db)
    assert done.exit_code == 2 and "error [llm_not_configured]" in done.stderr


def test_info_shows_what_is_in_effect(db: Path) -> None:
    done = run("info", db=db)
    assert done.exit_code == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["index"]["embedder"] == "all-MiniLM-L6-v2" and info["assignable_labels"] == 6
    # Six labels are too few to calibrate on themselves: the catalog's shape chose (three
    # examples per label: reciprocal rank over 3 hits, and the head trained on them mixed in),
    # and info says so per setting.
    assert info["retrieval"] == "rrf(k=1,m=3)+head(w=0.5)"
    assert info["calibration"]["source"] == "shape" and info["head"]["on"]
    assert info["settings_from"]["aggregation"] == info["settings_from"]["head_weight"] == "shape"
    assert info["settings_from"]["threshold"] == "default"
    assert info["embedder_backend"] == "onnx"  # the default runtime


def test_openai_batch_prepare_reports_its_files(db: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "my cat scratches everything"}\n{"id": 2, "text": ""}\n')
    done = CliRunner().invoke(app, ["batch", str(source), str(tmp_path / "out.jsonl"),
                                    "--db", str(db), "--openai-batch", "prepare"],
                              env={"LABELRANK_LLM_API_KEY": "unused"})
    assert done.exit_code == 0, done.output
    assert "prepared 1 requests for 2 records (1 input errors)" in done.stderr
    assert "requests-001.jsonl" in done.stderr
