"""`labelrank eval | compare | calibrate | report` through the real console entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import MINI_CATALOG
from tests.test_eval import GOLD

CLI = [sys.executable, "-c", "from eval.cli import main; main()"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABELRANK_", "OPENAI_"))}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300, check=False)


def test_eval_calibrate_compare_report(tmp_path: Path) -> None:
    gold = tmp_path / "gold" / "valid.jsonl"
    gold.parent.mkdir()
    gold.write_text("\n".join(json.dumps(row) for row in GOLD) + "\n")
    assert run("index", str(MINI_CATALOG), "--db", "db", cwd=tmp_path).returncode == 0

    before = run("eval", str(gold), "--db", "db", "--out", "runs", cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    assert "f1_samples" in before.stdout and "run saved to runs/" in before.stdout

    calibrated = run("calibrate", str(gold), "--db", "db", cwd=tmp_path)
    assert calibrated.returncode == 0, calibrated.stderr
    assert "<-" in calibrated.stdout and "saved with the index" in calibrated.stdout

    after = run("eval", str(gold), "--db", "db", "--out", "runs", cwd=tmp_path)
    runs = sorted((tmp_path / "runs").glob("*.json"))
    assert len(runs) == 2
    assert json.loads(runs[1].read_text())["settings"] != json.loads(runs[0].read_text())[
        "settings"]  # the calibration was used

    compared = run("compare", str(runs[0]), str(runs[1]), cwd=tmp_path)
    assert compared.returncode == 0 and "B-A" in compared.stdout

    plotted = run("report", str(runs[0]), str(runs[1]), "--out", "r.png", cwd=tmp_path)
    assert plotted.returncode == 0 and (tmp_path / "r.png").stat().st_size > 10_000
    assert after.returncode == 0


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    done = run("eval", "nope.jsonl", "--db", "db", cwd=tmp_path)
    assert done.returncode == 2 and "error [invalid_dataset]: dataset not found" in done.stderr
