"""`labelrank eval | compare | calibrate | report` through the command tree, in-process."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from click.testing import Result
from typer.testing import CliRunner

from eval.cli import app
from tests.conftest import MINI_CATALOG
from tests.test_eval import GOLD


def run(*args: str, cwd: Path) -> Result:
    unset: dict[str, str | None] = {k: None for k in os.environ
                                    if k.startswith(("LABELRANK_", "OPENAI_"))}
    with contextlib.chdir(cwd):
        return CliRunner().invoke(app, list(args), env=unset)


def test_eval_calibrate_compare_report(tmp_path: Path) -> None:
    gold = tmp_path / "gold" / "valid.jsonl"
    gold.parent.mkdir()
    gold.write_text("\n".join(json.dumps(row) for row in GOLD) + "\n")
    assert run("index", str(MINI_CATALOG), "--db", "db", cwd=tmp_path).exit_code == 0

    before = run("eval", str(gold), "--db", "db", "--out", "runs", cwd=tmp_path)
    assert before.exit_code == 0, before.stderr
    assert "f1_samples" in before.stdout and "run saved to runs/" in before.stdout

    calibrated = run("calibrate", str(gold), "--db", "db", cwd=tmp_path)
    assert calibrated.exit_code == 0, calibrated.stderr
    assert "<-" in calibrated.stdout and "saved with the index" in calibrated.stdout

    after = run("eval", str(gold), "--db", "db", "--out", "runs", cwd=tmp_path)
    runs = sorted((tmp_path / "runs").glob("*.json"))
    assert len(runs) == 2
    assert json.loads(runs[1].read_text())["settings"] != json.loads(runs[0].read_text())[
        "settings"]  # the calibration was used

    compared = run("compare", str(runs[0]), str(runs[1]), cwd=tmp_path)
    assert compared.exit_code == 0 and "B-A" in compared.stdout

    plotted = run("report", str(runs[0]), str(runs[1]), "--out", "r.png", cwd=tmp_path)
    assert plotted.exit_code == 0 and (tmp_path / "r.png").stat().st_size > 10_000
    assert after.exit_code == 0


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    done = run("eval", "nope.jsonl", "--db", "db", cwd=tmp_path)
    assert done.exit_code == 2 and "error [invalid_dataset]: dataset not found" in done.stderr
