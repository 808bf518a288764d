"""Retrieval-only accuracy on the shared datasets: naive baseline vs calibrated variants.

Every figure in docs/accuracy.md comes from this script. For each dataset it builds (or
reuses) an index, splits the evaluation texts by a stable hash of their id into a dev part
(calibration only) and a report part, and prints metrics on the report part for each variant,
all measured in the same run. Test splits are never read.

    python bench/accuracy.py --datasets clinc150 esco-tech --root /tmp/labelrank-acc
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from eval.calibrate import calibrate
from eval.datasets import Dataset, load_dataset
from eval.run import EvalConfig, run_eval
from retrieval.calibration.search import SearchSpace
from retrieval.catalog import Catalog, load_catalog, load_examples
from retrieval.fusion import Aggregation
from service.engine import open_engine
from service.factory import build_index, build_pipeline, search_space
from service.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
NAIVE = {"aggregation": "max", "max_hits_per_label": 0, "threshold": 0.4,
         "relative_threshold": 0.5, "max_labels": 5}
SUBQ = {"subqueries": 3}
ESCO_VARIANTS = {"calibrated+subqueries": SUBQ,
                 "calibrated+lexical(0.2)": {"aggregation": "max", "lexical_weight": 0.2},
                 "calibrated+subqueries+lexical(0.1)": {**SUBQ, "lexical_weight": 0.1},
                 "calibrated+subqueries+lexical(0.2)": {**SUBQ, "lexical_weight": 0.2}}


@dataclass
class Spec:
    """One dataset: where its labels, examples and evaluation texts come from."""

    folder: str
    eval_split: str
    examples: list[str] = field(default_factory=list)
    holdout_from_train: bool = False  # index half of train, evaluate on the other half
    variants: dict[str, dict] = field(default_factory=dict)
    top_k: int = 30
    ks: str = "RP@5 RP@10"


SPECS = {
    "clinc150": Spec("clinc150", "valid", ["train"]),
    "banking77": Spec("banking77", "train", ["train"], holdout_from_train=True),
    "hwu64": Spec("hwu64", "valid", ["train"]),
    "nlupp": Spec("nlupp", "valid", ["train"]),
    "codiesp": Spec("codiesp", "valid", ["train"], variants={"calibrated+subqueries": SUBQ},
                    top_k=50),
    "esco-tech": Spec("esco", "tech_valid", variants=ESCO_VARIANTS, top_k=50),
    "esco-house": Spec("esco", "house_valid", variants=ESCO_VARIANTS, top_k=50),
}
COLUMNS = ("candidate_recall@K", "R@5", "RP@5", "RP@10", "accuracy", "in_scope_accuracy",
           "none_recall", "f1_samples", "f1_micro")


def part(example_id: str, salt: str) -> str:
    """Stable dev/report assignment of one text."""
    return "dev" if hashlib.sha1(f"{salt}:{example_id}".encode()).digest()[0] % 2 else "report"


def split(dataset: Dataset, salt: str) -> tuple[Dataset, Dataset]:
    """Dev and report parts of a dataset."""
    parts: dict[str, list] = {"dev": [], "report": []}
    for ex in dataset.examples:
        parts[part(ex.id, salt)].append(ex)
    return (replace(dataset, examples=parts["dev"], sha256=dataset.sha256 + ":dev"),
            replace(dataset, examples=parts["report"], sha256=dataset.sha256 + ":report"))


def build(spec: Spec, root: Path, base: Settings) -> tuple[Settings, float, int]:
    """Index the dataset's catalog and examples; returns settings, seconds, vector count."""
    settings = base.model_copy(update={"db": root / spec.folder})
    catalog = dataset_catalog(spec)
    index = build_index(settings)
    started = time.perf_counter()
    report = index.sync(catalog)
    return settings, time.perf_counter() - started if report.vectors_added else 0.0, \
        report.vectors_total


def dataset_catalog(spec: Spec) -> Catalog:
    """The dataset's catalog with the examples this benchmark indexes."""
    catalog = load_catalog(DATA / spec.folder / "catalog.jsonl")
    for name in spec.examples:
        # Dirty rows (BANKING77-OOS's train has empty texts) are skipped, as `labelrank index` does.
        examples = load_examples(DATA / spec.folder / f"{name}.jsonl", catalog, skipped=[])
        if spec.holdout_from_train:
            examples = {lid: [t for t in texts if _text_half(t) == "index"]
                        for lid, texts in examples.items()}
        catalog = catalog.with_examples(examples)
    return catalog


def _text_half(text: str) -> str:
    return "index" if hashlib.sha1(text.encode()).digest()[0] % 2 else "eval"


def evaluate_dataset(name: str, spec: Spec, root: Path, base: Settings) -> dict:
    """All variants of one dataset, on its report part."""
    settings, build_s, vectors = build(spec, root, base)
    data = load_dataset(DATA / spec.folder / f"{spec.eval_split}.jsonl")
    if spec.holdout_from_train:
        data = replace(data, examples=[e for e in data.examples if _text_half(e.text) == "eval"])
    dev, report = split(data, name)
    rows = {}
    variants = {"naive (max-sim, uncalibrated)": NAIVE, "default (rrf k=1 m=3)": {},
                "calibrated": {}, **spec.variants}
    for variant, overrides in variants.items():
        started = time.perf_counter()
        current = settings.model_copy(update={"top_k": spec.top_k, **overrides})
        calibration = None
        if variant.startswith("calibrated"):
            fixed = "subqueries" in overrides or "aggregation" in overrides
            # these variants fix their own scoring; calibration picks only the threshold
            best, _ = calibrate(build_pipeline(current), dev,
                                space=fixed_space(current) if fixed else None)
            calibration = best.settings()
            if fixed:
                calibration = {k: calibration[k] for k in ("threshold", "relative_threshold",
                                                           "max_labels")}
            current = current.model_copy(update=calibration)
        run = run_eval(open_engine(current), report, EvalConfig(mode="retrieval", cache_dir=None))
        metrics = {k.replace(f"@{spec.top_k}", "@K"): v for k, v in run["metrics"].items()}
        rows[variant] = {"metrics": metrics, "calibration": calibration,
                         "retrieval": run["retrieval"]["aggregation"],
                         "seconds": round(time.perf_counter() - started, 1)}
        print(f"  {name} {variant}: " + ", ".join(
            f"{c}={metrics[c]:.3f}" for c in COLUMNS if c in metrics), flush=True)
    return {"dataset": name, "report_n": len(report.examples), "dev_n": len(dev.examples),
            "vectors": vectors, "index_build_s": round(build_s, 1), "top_k": spec.top_k,
            "variants": rows}


def fixed_space(settings: Settings) -> SearchSpace:
    """Only the retrieval these settings configure: calibrate its threshold."""
    space = search_space(settings)
    return SearchSpace.only(Aggregation(settings.aggregation, settings.rrf_k,
                                        settings.max_hits_per_label or None),
                            settings.neighbours, space.kinds, space.start)


def markdown(results: list[dict]) -> str:
    """One table per dataset."""
    out = []
    for res in results:
        cols = [c for c in COLUMNS
                if any(c in v["metrics"] for v in res["variants"].values())]
        out.append(f"### {res['dataset']} (report part n={res['report_n']}, dev n="
                   f"{res['dev_n']}, {res['vectors']} vectors, K={res['top_k']})\n")
        out.append("| variant | " + " | ".join(c.replace("@K", f"@{res['top_k']}")
                                              for c in cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        for variant, row in res["variants"].items():
            cells = [f"{100 * row['metrics'][c]:.1f}" if c in row["metrics"] else ""
                     for c in cols]
            out.append(f"| {variant} | " + " | ".join(cells) + " |")
        for variant, row in res["variants"].items():
            if row["calibration"]:
                out.append(f"\n{variant}: `{row['retrieval']}`, chosen on dev: "
                           f"`{json.dumps(row['calibration'])}`")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--root", type=Path, default=Path("/tmp/labelrank-acc"))
    parser.add_argument("--out", type=Path, default=None, help="Also write JSON results here.")
    args = parser.parse_args()
    base = Settings(_env_file=None, llm_base_url=None, llm_api_key=None)
    results = []
    for name in args.datasets:
        print(f"{name}: indexing and evaluating", flush=True)
        results.append(evaluate_dataset(name, SPECS[name], args.root, base))
    print("\n" + markdown(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
