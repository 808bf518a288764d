"""Real eval run files for the console's Runs pages: the same gold set at two thresholds."""

from __future__ import annotations

import json
from pathlib import Path

from eval.datasets import load_dataset
from eval.run import EvalConfig, run_eval, save_run
from retrieval.index import LabelIndex
from service.engine import open_engine
from tests.conftest import make_settings
from tests.test_eval import GOLD

LOOSE, STRICT = 0.3, 0.6  # the strict run loses labels the loose one found


def two_runs(index: LabelIndex, work: Path, out: Path) -> tuple[Path, Path]:
    """Run files A (loose threshold) and B (strict) of GOLD on `index`, saved in `out`."""
    gold = work / "gold.jsonl"
    gold.parent.mkdir(parents=True, exist_ok=True)
    gold.write_text("\n".join(json.dumps(row) for row in GOLD) + "\n")
    paths = []
    for threshold, note in ((LOOSE, "loose"), (STRICT, "strict")):
        engine = open_engine(make_settings(work, threshold=threshold), index=index)
        run = run_eval(engine, load_dataset(gold), EvalConfig(cache_dir=None, label=note))
        paths.append(save_run(run, out))
    return paths[0], paths[1]
