"""Pivots: candidate recall and accuracy with every example indexed vs at most N per label.

Same splits as bench/accuracy.py (CLINC150: train indexed, valid split into dev/report halves;
BANKING77: half of train indexed, the other half split into dev/report). For each cap it builds
an index with `labelrank index`'s code, then reports default and calibrated (on dev) metrics on
the report half, with the index's vector count, build time and size, all in one run.

    python bench/pivots.py --caps 0 10 25 --root /tmp/lr-pivots
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from accuracy import (  # bench/ is on sys.path as the script dir
    DATA,
    SPECS,
    _text_half,
    dataset_catalog,
    split,
)

from eval.calibrate import calibrate
from eval.datasets import load_dataset
from eval.run import EvalConfig, run_eval
from service.engine import open_engine
from service.factory import build_pipeline
from service.jobs.indexing import index_catalog
from service.settings import Settings

COLUMNS = ("candidate_recall@K", "accuracy", "in_scope_accuracy", "none_recall")


def disk_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def run(name: str, cap: int, root: Path) -> dict:
    spec = SPECS[name]
    settings = Settings(_env_file=None, db=root / f"{name}-cap{cap}", llm_base_url=None,
                        llm_api_key=None, max_examples_per_label=cap, top_k=spec.top_k)
    started = time.perf_counter()
    report, _ = index_catalog(settings, dataset_catalog(spec))
    build_s = time.perf_counter() - started
    data = load_dataset(DATA / spec.folder / f"{spec.eval_split}.jsonl")
    if spec.holdout_from_train:
        data = replace(data, examples=[e for e in data.examples if _text_half(e.text) == "eval"])
    dev, held = split(data, name)
    best, _ = calibrate(build_pipeline(settings), dev)
    row = {"dataset": name, "cap": cap or "all", "vectors": report.vectors_total,
           "left_out": report.examples_left_out, "build_s": round(build_s, 1),
           "disk_mb": disk_mb(settings.db)}
    for variant, current in [("default", settings),
                             ("calibrated", settings.model_copy(update=best.settings()))]:
        config = EvalConfig(mode="retrieval", cache_dir=None)
        metrics = run_eval(open_engine(current), held, config)["metrics"]
        metrics = {k.replace(f"@{spec.top_k}", "@K"): v for k, v in metrics.items()}
        row[variant] = {c: round(metrics[c], 4) for c in COLUMNS if c in metrics}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["clinc150", "banking77"])
    parser.add_argument("--caps", type=int, nargs="+", default=[0, 10, 25],
                        help="Examples per label; 0 = all.")
    parser.add_argument("--root", type=Path, default=Path("/tmp/lr-pivots"))
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    rows = [run(name, cap, opts.root) for name in opts.datasets for cap in opts.caps]
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
