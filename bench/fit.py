"""`labelrank fit` against the shipped defaults, on report parts that fit never saw.

For each dataset: the shipped path (index the catalog with the training examples, defaults as
they are) and `fit` (the same catalog and examples; it holds its own dev split out of them),
both scored on bench/accuracy.py's report part of the evaluation texts, in the same run. On
CLINC150 fit runs again for a second none share (the tuned model is reused), and a fifth of
the labels is held out of tuning, then added to the fitted index with no re-tuning, to see how
the tuned metric carries over to labels it never saw. Test splits are never read.

    LABELRANK_EMBED_THREADS=1 nice -n 10 .venv/bin/python bench/fit.py --datasets clinc150 \\
        --minutes 60 --max-pairs 4000 --root /tmp/labelrank-fit --json fit.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import DATA, SPECS, Spec, build, dataset_catalog
from tuning import report_part, training_file

from eval.datasets import Dataset
from eval.run import EvalConfig, run_eval
from retrieval.catalog import load_catalog
from service.engine import open_engine
from service.jobs.fit import FitConfig, fit
from service.settings import Settings

SPECS = {**SPECS, "goemotions": Spec("goemotions", "valid", ["train"]),
         "banking77_oos": Spec("banking77_oos", "valid", ["train"])}
COLUMNS = ("in_scope_accuracy", "accuracy", "none_recall", "none_auroc", "f1_samples",
           "candidate_recall@K")
HELD_OUT_SHARE = 5  # one label in five is held out of tuning in the unseen-labels run


def scored(settings: Settings, data: Dataset, top_k: int) -> dict[str, float]:
    """Retrieval-only metrics of the index at `settings` on `data`."""
    engine = open_engine(settings.model_copy(update={"top_k": top_k}))
    run = run_eval(engine, data, EvalConfig(mode="retrieval", cache_dir=None))
    return {k.replace(f"@{top_k}", "@K"): v for k, v in run["metrics"].items()}


def line(name: str, metrics: dict[str, float], extra: str = "") -> str:
    """One printed row."""
    figures = ", ".join(f"{c}={metrics[c]:.4f}" for c in COLUMNS if c in metrics)
    return f"  {name:<34} {figures} {extra}"


def fitted(name: str, spec: Spec, root: Path, base: Settings, examples: Path,
           config: FitConfig, tag: str = "fit") -> tuple[Settings, dict]:
    """Run fit into root/tag/name; its settings and a summary of its report."""
    settings = base.model_copy(update={"db": root / tag / spec.folder})
    started = time.perf_counter()
    report = fit(settings, DATA / spec.folder / "catalog.jsonl", [examples], None,
                 config,
                 progress=lambda stage: print(f"    {name}: {stage}", flush=True))
    return settings, {"model": report.model, "why": report.why, "wall_s":
                      round(time.perf_counter() - started), "stages_s": report.seconds,
                      "none_share": report.none_share, "dev_texts": report.dev_texts,
                      "dev": report.dev, "pairs": report.pairs, "budget": report.budget,
                      "settings": report.settings}


def unseen_labels(spec: Spec, root: Path, base: Settings, shipped: Settings,
                  data: Dataset, config: FitConfig) -> dict:
    """Fit without a fifth of the labels' examples, add them afterwards (no re-tuning), and
    score those labels' report texts against the base model on the same texts."""
    labels = sorted(load_catalog(DATA / spec.folder / "catalog.jsonl").labels)
    held = {lid for lid in labels
            if hashlib.sha1(lid.encode()).digest()[0] % HELD_OUT_SHARE == 0}
    source = DATA / spec.folder / "train.jsonl"
    kept = [row for row in source.read_text().splitlines()
            if row.strip() and not set(json.loads(row)["labels"]) & held]
    partial = root / "unseen" / "train-without-held-labels.jsonl"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("\n".join(kept) + "\n")
    settings, summary = fitted("unseen", spec, root, base, partial, config, "unseen")
    # The held-out labels' examples join the fitted index, embedded with its (tuned) model.
    open_engine(settings).index.sync(dataset_catalog(spec))
    texts = replace(data, examples=[e for e in data.examples if set(e.labels) & held])
    return {"held_labels": len(held), "texts": len(texts.examples), "fit": summary,
            "fitted_index": scored(settings, texts, spec.top_k),
            "base_model": scored(shipped, texts, spec.top_k)}


def evaluate(name: str, root: Path, config: FitConfig, shares: list[float | None]) -> dict:
    """The shipped path and fit on one dataset's report part."""
    spec = SPECS[name]
    base = Settings(_env_file=None, llm_base_url=None, llm_api_key=None)
    data = report_part(name, spec)
    shipped, _, _ = build(spec, root / "shipped", base)
    results = {"shipped": scored(shipped, data, spec.top_k)}
    print(line("shipped defaults", results["shipped"]), flush=True)
    examples = training_file(name, root, spec)
    for share in shares:
        settings, summary = fitted(name, spec, root, base, examples,
                                   replace(config, none_share=share))
        key = f"fit (none share {share})" if share is not None else "fit"
        results[key] = {**scored(settings, data, spec.top_k), "fit": summary}
        print(line(key, results[key], f"[{summary['model']}: {summary['why']}; "
                                      f"{summary['wall_s']} s]"), flush=True)
    if name == "clinc150":
        results["unseen_labels"] = unseen_labels(spec, root, base, shipped, data, config)
        unseen = results["unseen_labels"]
        print(line("unseen labels, fitted index", unseen["fitted_index"]), flush=True)
        print(line("unseen labels, base model", unseen["base_model"]), flush=True)
    return results


def main() -> None:
    """Run the chosen datasets and print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["clinc150", "hwu64", "banking77",
                                                          "nlupp", "goemotions",
                                                          "banking77_oos"])
    parser.add_argument("--minutes", type=float, default=20.0, help="fit's tuning budget")
    parser.add_argument("--max-pairs", type=int, help="tune on at most N pairs (a fixed "
                        "amount of training, whatever else the machine is doing)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/labelrank-fit"))
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    figures = {}
    for name in args.datasets:
        print(f"{name}:", flush=True)
        shares = [0.1, 0.2] if name == "clinc150" else [None]
        config = FitConfig(minutes=args.minutes, max_pairs=args.max_pairs)
        figures[name] = evaluate(name, args.root, config, shares)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
