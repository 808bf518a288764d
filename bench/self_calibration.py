"""Self-calibration against the old defaults, the shape default and labeled calibration.

For each dataset, on half `b` of its evaluation split (by id, `eval.datasets.in_half`):
(a) the defaults before self-calibration (rrf k=1 m=3, threshold 0.4, relative 0.5, at most
5 labels), max-similarity with the same threshold for reference, (b) the shape default chosen
at index time, (c) self-calibration only (pseudo-queries from the catalog), (d) `calibrate` on
half `a`. Every calibrated field is set explicitly per row, so nothing saved with the index
leaks in. Indexes are built once under --root and reused. Test splits are never read.

    python -m bench.self_calibration --datasets esco-tech esco-house clinc150 --root /tmp/lr-selfcal

`speed` times sub-queries on ESCO tech_valid (the settings docs/accuracy.md chose by hand) in
this tree and, with --before-tree, in a checkout of an older commit, back to back:

    python -m bench.self_calibration speed --root /tmp/lr-selfcal --before-tree /tmp/lr-before

`bound` runs self-calibration as `labelrank index` does (after the head's training), under the
plan before issue 25 (every variant on the whole sample, the full grid, no stage output reused,
no budget) and the bounded plan of today, back to back on the same index, and prints each one's
seconds, its ratio to the index's embedding time, its work (settings ranked, texts ranked,
texts encoded) and the chosen settings' metrics on the report half b (the demo: its gold set):

    python -m bench.self_calibration bound --datasets demo hwu64 clinc150 --root /tmp/lr-bound

`work` runs one unbounded self-calibration per catalog and prints the work it counted of each
kind (reference seconds, `retrieval/calibration/work.py`) beside the wall time each took here:
on the reference machine (2 cores, idle) the two should agree, and `COSTS` is fitted to them:

    python -m bench.self_calibration work --datasets demo clinc150 nlupp --root /tmp/lr-bound
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.accuracy import DATA, SPECS, _text_half, dataset_catalog
from eval.calibrate import calibrate
from eval.datasets import Dataset, load_dataset
from eval.run import EvalConfig, run_eval
from retrieval.calibration.work import WorkMeter
from retrieval.catalog import load_catalog
from retrieval.index import LabelIndex
from service.engine import open_engine
from service.factory import build_index, build_pipeline, calibrated_fields, search_space
from service.jobs.indexing import train_head
from service.jobs.self_calibration import self_calibrate, shape_record
from service.settings import Settings

DEMO = Path(__file__).resolve().parents[1] / "service" / "demo_data"

DATASETS = ("esco-tech", "esco-house", "clinc150", "banking77", "hwu64", "nlupp", "codiesp")
COLUMNS = ("candidate_recall@K", "RP@5", "RP@10", "accuracy", "in_scope_accuracy",
           "none_recall", "f1_samples")
DEFAULTS = Settings(_env_file=None)
OLD = {name: getattr(DEFAULTS, name) for name in calibrated_fields()  # before issue 18
       if hasattr(DEFAULTS, name)}
MAX_SIMILARITY = {**OLD, "aggregation": "max"}
# The settings docs/accuracy.md chose by hand for ESCO, timed by `speed`.
SUBQUERIES = {"aggregation": "max", "subqueries": 3, "subquery_neighbours": 50,
              "lexical_weight": 0.2, "top_k": 50}


def halves(name: str) -> tuple[Dataset, Dataset]:
    """Dev half a and report half b of the dataset's evaluation texts."""
    spec = SPECS[name]
    path = DATA / spec.folder / f"{spec.eval_split}.jsonl"
    dev, report = load_dataset(path, half="a"), load_dataset(path, half="b")
    if spec.holdout_from_train:  # the other half of train is indexed
        dev, report = (replace(d, examples=[e for e in d.examples if _text_half(e.text) == "eval"])
                       for d in (dev, report))
    return dev, report


def evaluate(name: str, root: Path, texts: int) -> dict:
    """The rows of one dataset."""
    spec = SPECS[name]
    settings = Settings(_env_file=None, db=root / spec.folder, llm_base_url=None,
                        llm_api_key=None, top_k=spec.top_k, self_calibration_texts=texts)
    index = build_index(settings)
    started = time.perf_counter()
    sync = index.sync(dataset_catalog(spec))
    print(f"  index: +{sync.vectors_added} vectors ({time.perf_counter() - started:.0f} s)",
          flush=True)
    dev, report = halves(name)
    rows: dict[str, dict] = {}
    chosen = {"(a) defaults before": OLD, "max-similarity": MAX_SIMILARITY,
              "(b) shape default": {**OLD, **shape_record(index)["settings"]}}
    started = time.perf_counter()
    found = self_calibrate(settings, index)
    chosen["(c) self-calibration"] = {**OLD, **found.record["settings"]}
    notes = {"(c) self-calibration": {"seconds": round(time.perf_counter() - started, 1),
                                      **found.record.get("dev_set", {})}}
    started = time.perf_counter()
    best, _ = calibrate(build_pipeline(settings.model_copy(update=OLD)), dev)
    chosen["(d) labeled calibration (half a)"] = {**OLD, **best.settings()}
    notes["(d) labeled calibration (half a)"] = {"seconds": round(time.perf_counter() - started,
                                                                  1), "n": len(dev.examples)}
    for row, values in chosen.items():
        engine = open_engine(settings.model_copy(update=values))
        run = run_eval(engine, report, EvalConfig(mode="retrieval", cache_dir=None))
        metrics = {k.replace(f"@{spec.top_k}", "@K"): v for k, v in run["metrics"].items()}
        rows[row] = {"metrics": metrics, "retrieval": run["retrieval"]["aggregation"],
                     "settings": values, "texts_per_s": run["totals"]["texts_per_s"],
                     **({"calibration": notes[row]} if row in notes else {})}
        print(f"  {name} {row} [{rows[row]['retrieval']}]: " + ", ".join(
            f"{c}={100 * metrics[c]:.1f}" for c in COLUMNS if c in metrics), flush=True)
    return {"dataset": name, "report_n": len(report.examples), "dev_n": len(dev.examples),
            "top_k": spec.top_k, "rows": rows}


def markdown(results: list[dict]) -> str:
    """One table per dataset, in percent, with what each row ran."""
    out = []
    for res in results:
        cols = [c for c in COLUMNS if any(c in r["metrics"] for r in res["rows"].values())]
        out.append(f"### {res['dataset']} (report half b n={res['report_n']}, dev half a "
                   f"n={res['dev_n']}, K={res['top_k']})\n")
        out.append("| row | retrieval | " + " | ".join(
            c.replace("@K", f"@{res['top_k']}") for c in cols) + " |")
        out.append("|---" * (len(cols) + 2) + "|")
        for row, r in res["rows"].items():
            cells = [f"{100 * r['metrics'][c]:.1f}" if c in r["metrics"] else "" for c in cols]
            out.append(f"| {row} | `{r['retrieval']}` | " + " | ".join(cells) + " |")
        for row, r in res["rows"].items():
            if "calibration" in r:
                out.append(f"\n{row}: {json.dumps(r['calibration'])}")
        out.append("")
    return "\n".join(out)


SPEED = """
import json, sys, time
from eval.datasets import load_dataset
from eval.run import EvalConfig, run_eval
from retrieval.catalog import load_catalog
from service.engine import open_engine
from service.settings import Settings
args = json.loads(sys.argv[1])
settings = Settings(_env_file=None, db=args["db"], llm_base_url=None, llm_api_key=None,
                    self_calibration_texts=0, **args["settings"])
engine = open_engine(settings)
data = load_dataset(args["path"], limit=args["limit"])
engine.pipeline.retriever.candidates([e.text for e in data.examples[:2]], 5)  # load the model
run = run_eval(engine, data, EvalConfig(mode="retrieval", cache_dir=None))
print(json.dumps({"RP@10": run["metrics"]["RP@10"], "texts_per_s": run["totals"]["texts_per_s"],
                  "retrieval": run["retrieval"]["aggregation"]}))
"""


def speed(root: Path, trees: dict[str, Path], limit: int | None, repeat: int) -> None:
    """Texts/s and RP@10 of the hand-picked sub-query settings (and of whole texts) per tree."""
    path = DATA / "esco" / "tech_valid.jsonl"
    variants = {"sub-queries": SUBQUERIES, "whole text": {"aggregation": "max", "top_k": 50}}
    for attempt in range(repeat):
        for variant, values in variants.items():
            for tree_name, tree in trees.items():
                args = json.dumps({"db": str(root / "esco"), "path": str(path), "limit": limit,
                                   "settings": values})
                env = {k: v for k, v in os.environ.items() if not k.startswith("LABELRANK_")}
                done = subprocess.run([sys.executable, "-c", SPEED, args], cwd=tree,
                                      env={**env, "PYTHONPATH": str(tree)},
                                      capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{variant:<12} {tree_name:<8} run {attempt + 1}: "
                      f"RP@10 {100 * result['RP@10']:.1f}  {result['texts_per_s']} texts/s  "
                      f"[{result['retrieval']}]", flush=True)


def built(name: str, root: Path) -> tuple[Settings, LabelIndex, dict]:
    """The catalog's index under `root` (built once, the demo every time), its settings and
    what its build measured (embedding seconds, vectors)."""
    db = root / name
    settings = Settings(_env_file=None, db=db, llm_base_url=None, llm_api_key=None,
                        top_k=30 if name == "demo" else SPECS[name].top_k)
    measured = db / "bench-build.json"  # the embedding time, measured when the index was built
    if name == "demo" or not measured.exists():
        catalog = (load_catalog(DEMO / "catalog.jsonl") if name == "demo"
                   else dataset_catalog(SPECS[name]))
        shutil.rmtree(db, ignore_errors=True)
        started = time.perf_counter()
        sync = build_index(settings).sync(catalog)
        seconds = time.perf_counter() - started
        print(f"  {name} index: +{sync.vectors_added} vectors in {seconds:.1f} s; "
              f"{train_head(settings, build_index(settings))}", flush=True)
        measured.write_text(json.dumps({"embed_seconds": seconds, "vectors": sync.vectors_added}))
    return settings, build_index(settings), json.loads(measured.read_text())


def bound(name: str, root: Path, rounds: int) -> list[dict]:
    """Old plan against the bounded plan on one catalog, `rounds` times interleaved."""
    settings, index, embed = built(name, root)
    report = (load_dataset(DEMO / "gold.jsonl") if name == "demo" else halves(name)[1])
    plans = {"before": (search_space(settings, reuse=False), settings.self_calibration_texts),
             "bounded": (None, None)}
    rows = []
    for attempt in range(rounds):
        for plan, (space, texts) in plans.items():
            found = self_calibrate(settings, index, space=space, texts=texts)
            engine = open_engine(settings.model_copy(update={**OLD, **found.record["settings"]}))
            run = run_eval(engine, report, EvalConfig(mode="retrieval", cache_dir=None))
            metrics = {k: round(100 * v, 1) for k, v in run["metrics"].items()
                       if k in ("f1_samples", "accuracy", "in_scope_accuracy")
                       or k.startswith("candidate_recall")}
            row = {"catalog": name, "plan": plan, "round": attempt + 1,
                   "seconds": round(found.seconds, 1),
                   "ratio": round(found.seconds / embed["embed_seconds"], 2),
                   "embed_seconds": round(embed["embed_seconds"], 1),
                   "work": found.record["dev_set"].get("work", {}),
                   "retrieval": found.record["retrieval"], "metrics": metrics}
            rows.append(row)
            print(f"  {name} {plan} round {attempt + 1}: {row['seconds']} s = {row['ratio']}x "
                  f"embedding ({row['embed_seconds']} s); {json.dumps(row['work'])}; "
                  f"[{row['retrieval']}] {json.dumps(metrics)}", flush=True)
    return rows


def work(name: str, root: Path) -> dict:
    """One unbounded self-calibration: the work counted of each kind (reference seconds,
    `retrieval/calibration/work.py`) beside the wall time it took here."""
    settings, index, _ = built(name, root)
    meter = WorkMeter()
    found = self_calibrate(settings, index, meter=meter)
    print(f"{name}: {found.seconds:.1f} s wall in all, {meter.wall_total:.1f} s of it counted "
          f"as {meter.spent:.1f} s of work ({meter.spent / meter.wall_total:.2f}x)", flush=True)
    for kind in sorted(meter.by_kind, key=meter.by_kind.get, reverse=True):
        wall = meter.wall.get(kind, 0.0)
        ratio = f"{meter.by_kind[kind] / wall:.2f}x" if wall > 0.05 else "-"
        print(f"  {kind:<16} work {meter.by_kind[kind]:6.2f} s  wall {wall:6.2f} s  {ratio}")
    return {"catalog": name, "seconds": round(found.seconds, 1),
            "wall_counted": round(meter.wall_total, 1), "work": meter.describe(),
            "wall": {k: round(v, 2) for k, v in meter.wall.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=("accuracy", "speed", "bound", "work"),
                        default="accuracy")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS),
                        choices=(*DATASETS, "demo"), help="demo: bound and work only.")
    parser.add_argument("--rounds", type=int, default=1, help="bound: rounds, interleaved.")
    parser.add_argument("--root", type=Path, default=Path("/tmp/lr-selfcal"))
    parser.add_argument("--texts", type=int, default=DEFAULTS.self_calibration_texts,
                        help="Pseudo-queries for self-calibration.")
    parser.add_argument("--out", type=Path, default=None, help="Also write JSON results here.")
    parser.add_argument("--before-tree", type=Path, default=None,
                        help="speed: also time this checkout (an older commit).")
    parser.add_argument("--limit", type=int, default=None, help="speed: first N texts only.")
    parser.add_argument("--repeat", type=int, default=2, help="speed: rounds.")
    args = parser.parse_args()
    if args.what == "speed":
        trees = {"this": Path(__file__).resolve().parents[1]}
        if args.before_tree:
            trees = {"before": args.before_tree.resolve(), **trees}
        speed(args.root, trees, args.limit, args.repeat)
        return
    if args.what == "work":
        rows = [work(name, args.root) for name in args.datasets]
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
        return
    if args.what == "bound":
        rows = [row for name in args.datasets for row in bound(name, args.root, args.rounds)]
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
        return
    results = []
    for name in args.datasets:
        print(f"{name}:", flush=True)
        results.append(evaluate(name, args.root, args.texts))
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
