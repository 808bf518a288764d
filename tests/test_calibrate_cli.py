"""`labelrank index` calibrates a catalog on itself, `calibrate --self | DATASET` and `info`
say which dev set each setting came from; dirty example rows are skipped, or refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from eval.cli import app
from tests.conftest import DATA, MINI_CATALOG

SKILLS = DATA / "skills_catalog.jsonl"
GOLD = [{"id": "1", "text": "bake sourdough bread and decorate cakes",
         "labels": ["baking", "pastry"]},
        {"id": "2", "text": "drive a forklift in the warehouse", "labels": ["forklift"]},
        {"id": "3", "text": "run the payroll and file tax returns", "labels": ["payroll", "tax"]},
        {"id": "4", "text": "fix leaking pipes", "labels": ["plumbing"]}]


def run(*args: str, **env: str) -> Result:
    clean: dict[str, str | None] = {k: None for k in os.environ
                                    if k.startswith(("LABELRANK_", "OPENAI_"))}
    return CliRunner().invoke(app, list(args), env={**clean, **env})


def info(db: Path) -> dict:
    done = run("info", "--db", str(db))
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_index_self_calibrates_then_labeled_data_overrides(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    indexed = run("index", str(SKILLS), "--db", db, LABELRANK_SELF_CALIBRATION_TEXTS="60")
    assert indexed.exit_code == 0, indexed.stderr
    assert "self-calibrated in" in indexed.stderr and "pseudo-queries" in indexed.stderr
    shown = info(tmp_path / "db")
    assert shown["calibration"]["source"] == "self"
    assert shown["settings_from"]["aggregation"] == "self"

    gold = tmp_path / "skills" / "valid.jsonl"
    gold.parent.mkdir()
    gold.write_text("".join(json.dumps(row) + "\n" for row in GOLD))
    labeled = run("calibrate", str(gold), "--db", db, "--top-k", "5")
    assert labeled.exit_code == 0, labeled.stderr
    assert "texts/s" in labeled.stdout and "saved with the index (labeled)" in labeled.stdout
    shown = info(tmp_path / "db")
    assert shown["calibration"]["dev_set"]["name"] == "skills/valid"
    assert set(shown["settings_from"].values()) == {"labeled"}

    again = run("index", str(SKILLS), "--db", db)
    assert "calibration from labeled data kept" in again.stderr
    assert info(tmp_path / "db")["calibration"]["source"] == "labeled"

    replaced = run("calibrate", "--self", "--db", db, "--min-texts-per-s", "1e9",
                   LABELRANK_SELF_CALIBRATION_TEXTS="60")
    assert replaced.exit_code == 0, replaced.stderr
    assert "saved with the index (self)" in replaced.stdout
    assert "no setting reached 1e+09 texts/s here: the fastest was chosen" in replaced.stderr
    saved = info(tmp_path / "db")["calibration"]
    assert saved["source"] == "self" and saved["settings"]["subqueries"] == 0  # too slow

    bounded = run("calibrate", "--self", "--db", db, "--seconds", "0", "--dry-run",
                  LABELRANK_SELF_CALIBRATION_TEXTS="60")
    assert bounded.exit_code == 0, bounded.stderr
    assert "budget of 0 s of work spent, not tried: " in bounded.stderr


def test_a_stated_none_share_is_weighed_saved_and_recalibrates_an_unchanged_catalog(
        tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    assert run("index", str(SKILLS), "--db", db,
               LABELRANK_SELF_CALIBRATION_TEXTS="60").exit_code == 0
    first = info(tmp_path / "db")["calibration"]
    assert "none_share" not in first["dev_set"]
    again = run("index", str(SKILLS), "--db", db, LABELRANK_SELF_CALIBRATION_TEXTS="60")
    assert "self calibration up to date" in again.stderr
    stated = run("index", str(SKILLS), "--db", db, LABELRANK_SELF_CALIBRATION_TEXTS="60",
                 LABELRANK_SELF_CALIBRATION_NONE_SHARE="0.9")
    assert "self-calibrated in" in stated.stderr, stated.stderr  # not "up to date"
    weighed = info(tmp_path / "db")["calibration"]
    assert weighed["dev_set"]["none_share"] == 0.9
    # Nine tenths of the metric on the 3 texts of no label (the threshold already rejects them).
    assert weighed["dev_set"]["composition"]["none"] > 0 and weighed["value"] > first["value"]
    stated_by_hand(tmp_path / "db", "--none-share", "0.3", "none_share",
                   "--none-share weighs --self")


def stated_by_hand(db: Path, option: str, value: str, key: str, refusal: str) -> None:
    """`calibrate --self OPTION VALUE` saves the share in the record; with a labeled dataset
    the option is refused with `refusal`."""
    by_hand = run("calibrate", "--self", "--db", str(db), option, value,
                  LABELRANK_SELF_CALIBRATION_TEXTS="60")
    assert by_hand.exit_code == 0, by_hand.stderr
    assert info(db)["calibration"]["dev_set"][key] == float(value)
    labeled = run("calibrate", str(db.parent / "gold.jsonl"), "--db", str(db), option, value)
    assert labeled.exit_code == 2 and refusal in labeled.output


def test_a_stated_multi_share_shapes_the_pseudo_queries_saved_and_recalibrates(
        tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    assert run("index", str(SKILLS), "--db", db,
               LABELRANK_SELF_CALIBRATION_TEXTS="60").exit_code == 0
    first = info(tmp_path / "db")["calibration"]["dev_set"]
    assert first["multi_share"] == 0.4 and first["composition"]["composed"] > 0
    single = run("index", str(SKILLS), "--db", db, LABELRANK_SELF_CALIBRATION_TEXTS="60",
                 LABELRANK_SELF_CALIBRATION_MULTI_SHARE="0")
    assert "self-calibrated in" in single.stderr, single.stderr  # not "up to date"
    stated = info(tmp_path / "db")["calibration"]
    assert stated["dev_set"]["multi_share"] == 0.0
    assert "composed" not in stated["dev_set"]["composition"]
    assert stated["metric"] == "accuracy"  # no pseudo-query has two labels
    again = run("index", str(SKILLS), "--db", db, LABELRANK_SELF_CALIBRATION_TEXTS="60",
                LABELRANK_SELF_CALIBRATION_MULTI_SHARE="0")
    assert "self calibration up to date" in again.stderr
    stated_by_hand(tmp_path / "db", "--multi-share", "0.2", "multi_share",
                   "--multi-share shapes --self")


def test_calibrate_needs_a_dataset_or_self(tmp_path: Path) -> None:
    done = run("calibrate", "--db", str(tmp_path / "db"))
    assert done.exit_code == 2 and "give a labeled DATASET or --self" in done.output


@pytest.fixture
def dirty(tmp_path: Path) -> Path:
    rows = ['{"text": "my old dog limps", "labels": ["pets.dogs"]}',
            '{"text": "", "labels": ["pets.dogs"]}',
            '{"text": "a parrot that talks", "labels": ["pets.birds"]}',
            '{"text": "cut off mid-line',
            '{"text": "how long to knead dough", "labels": ["food.baking"]}']
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_bad_example_rows_are_skipped_and_named(tmp_path: Path, dirty: Path) -> None:
    done = run("index", str(MINI_CATALOG), "-e", str(dirty), "--db", str(tmp_path / "db"),
               LABELRANK_SELF_CALIBRATION_TEXTS="0")
    assert done.exit_code == 0, done.stderr
    assert "example rows skipped: 3 (--strict stops on them)" in done.stderr
    assert "train.jsonl:2: missing or empty 'text'" in done.stderr
    assert "train.jsonl:3: unknown label id 'pets.birds'" in done.stderr
    assert "train.jsonl:4: not valid JSON" in done.stderr
    assert "shape default saved" in done.stderr


def test_strict_refuses_the_first_bad_example_row(tmp_path: Path, dirty: Path) -> None:
    done = run("index", str(MINI_CATALOG), "-e", str(dirty), "--db", str(tmp_path / "db"),
               "--strict")
    assert done.exit_code == 2
    assert "error [invalid_catalog]: train.jsonl:2: missing or empty 'text'" in done.stderr
