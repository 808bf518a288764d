"""Taxonomy figures: flat vs branch retrieval, labels across branches, "none of these".

For each dataset it indexes the catalog with the train texts as examples (or reuses the index
under --root), calibrates on half `a` of the valid split and reports on half `b`, for the best
flat and the best branch calibration (each with its own threshold), and optionally for a copy
of the index where every label also carries its ancestors' names ("ancestor context").
Test splits are never read.

    python bench/taxonomy.py --datasets clinc150 codiesp --root /tmp/lr-tax --context
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from eval.calibrate import calibrate
from eval.datasets import load_dataset
from eval.run import EvalConfig, run_eval
from retrieval.branches import BranchStage
from retrieval.calibration.scoring import Calibration
from retrieval.catalog import Catalog, load_catalog, load_examples
from retrieval.taxonomy import Taxonomy
from service.engine import open_engine
from service.factory import build_index, build_pipeline
from service.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TOP_K = {"codiesp": 50}
COLUMNS = ("candidate_recall@K", "RP@5", "accuracy", "in_scope_accuracy", "none_precision",
           "none_recall", "f1_samples", "n_multi_branch", "multi_branch_recovered")


def nonblank(path: Path) -> Path:
    """The labeled file without rows whose text is blank (BANKING77-OOS train has two), which
    `labelrank index` rightly refuses; a filtered copy under /tmp when there are any."""
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("text", "").strip()]
    if len(kept) == len([line for line in lines if line.strip()]):
        return path
    copy = Path(tempfile.gettempdir()) / f"labelrank-nonblank-{path.parent.name}-{path.name}"
    copy.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return copy


def catalog_with_examples(name: str, context: bool) -> Catalog:
    """The dataset's catalog with its train texts as examples (and ancestor-path aliases)."""
    catalog = load_catalog(DATA / name / "catalog.jsonl")
    catalog = catalog.with_examples(load_examples(nonblank(DATA / name / "train.jsonl"), catalog))
    if not context:
        return catalog
    taxonomy = Taxonomy(catalog.labels)
    labels = {}
    for lid, lab in catalog.labels.items():
        names = [catalog.labels[a].name for a in taxonomy.path(lid)]
        labels[lid] = replace(lab, aliases=(*lab.aliases, " > ".join([*names, lab.name])))\
            if names else lab
    return Catalog(labels)


def index_settings(name: str, root: Path, base: Settings, context: bool) -> Settings:
    """Settings on the dataset's index, built or brought up to date (only changes embed)."""
    db = root / (f"{name}-context" if context else name)
    if context and not db.exists() and (root / name).exists():
        shutil.copytree(root / name, db)  # the context copy adds only the path vectors
    settings = base.model_copy(update={"db": db, "top_k": TOP_K.get(name, 30)})
    started = time.perf_counter()
    report = build_index(settings).sync(catalog_with_examples(name, context))
    print(f"  index {db}: +{report.vectors_added} vectors "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return settings


def report_row(settings: Settings, cal: Calibration, name: str) -> dict:
    """Metrics on valid half b with the calibration's settings."""
    current = settings.model_copy(update=cal.settings())
    data = load_dataset(DATA / name / "valid.jsonl", half="b")
    run = run_eval(open_engine(current), data, EvalConfig(mode="retrieval", cache_dir=None))
    metrics = {k.replace(f"@{current.top_k}", "@K"): v for k, v in run["metrics"].items()}
    return {"variant": cal.describe(), "dev": round(cal.value, 4), "metric": cal.metric,
            "settings": cal.settings(), "metrics": metrics, "n": run["dataset"]["n"]}


def evaluate(name: str, root: Path, base: Settings, context: bool) -> list[dict]:
    """Best flat and best branch calibration (on half a), each reported on half b; on a
    taxonomy also the best flat one whose relative threshold is overall, not per branch."""
    settings = index_settings(name, root, base, context)
    dev = load_dataset(DATA / name / "valid.jsonl", half="a")
    pipeline = build_pipeline(settings)
    chosen, table = calibrate(pipeline, dev)
    best: dict[str, Calibration] = {}
    if any(cal.threshold.per_branch for cal in table):
        overall, _ = calibrate(pipeline, dev, per_branch=False)
        best["chosen with an overall relative threshold"] = overall
    for cal in table:
        kind = "branch" if cal.stage(BranchStage) else "flat"
        if kind not in best or cal.value > best[kind].value + 1e-9:
            best[kind] = cal
    print(f"  calibrate chooses: {chosen.describe()} {chosen.settings()}", flush=True)
    rows = []
    for kind, cal in best.items():
        row = report_row(settings, cal, name)
        row["kind"] = f"{kind}+context" if context else kind
        rows.append(row)
        print(f"  {name} {row['kind']} {row['variant']} (dev {cal.metric} {cal.value:.4f}): "
              + ", ".join(f"{c}={row['metrics'][c]:.4f}" for c in COLUMNS
                          if c in row["metrics"]), flush=True)
    return rows


def markdown(name: str, rows: list[dict]) -> str:
    """One table per dataset, in percent (counts as they are)."""
    cols = [c for c in COLUMNS if any(c in r["metrics"] for r in rows)]
    out = [f"| {name} (valid half b, n={rows[0]['n']}) | dev | "
           + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for r in rows:
        cells = [str(r["metrics"][c]) if c.startswith("n_") else
                 f"{100 * r['metrics'][c]:.1f}" if c in r["metrics"] else "" for c in cols]
        out.append(f"| {r['kind']}: `{r['variant']}` | {100 * r['dev']:.1f} | "
                   + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", required=True)
    parser.add_argument("--root", type=Path, default=Path("/tmp/lr-tax"))
    parser.add_argument("--context", action="store_true",
                        help="Also measure ancestor names as an extra label vector.")
    parser.add_argument("--out", type=Path, default=None, help="Also write JSON results here.")
    args = parser.parse_args()
    base = Settings(_env_file=None, llm_base_url=None, llm_api_key=None)
    results = {}
    for name in args.datasets:
        print(f"{name}:", flush=True)
        rows = evaluate(name, args.root, base, context=False)
        if args.context:
            rows += evaluate(name, args.root, base, context=True)
        results[name] = rows
        print(markdown(name, rows) + "\n", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
