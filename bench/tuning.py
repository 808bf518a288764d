"""Before/after figures for `labelrank tune` on the intent sets (docs/accuracy.md).

For each dataset: tune the default embedder on the texts the baseline index holds as examples
(BANKING77: the indexed half of `train`; the others: `train`), mining hard negatives from a copy
of that baseline index; re-index the same catalog and examples with the tuned model; then score
the baseline and the tuned index on bench/accuracy.py's report part (texts that neither the
index nor the tuning saw) with the same fixed settings, in the same run. Baseline indexes are
copied from --baseline-root when present.

    LABELRANK_EMBED_THREADS=1 nice -n 10 .venv/bin/python bench/tuning.py --datasets banking77
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import COLUMNS, DATA, NAIVE, SPECS, Spec, _text_half, build, split

from eval.datasets import Dataset, load_dataset
from eval.run import EvalConfig, run_eval
from retrieval.tune.train import PROVENANCE_FILE, TuneConfig, tune
from service.engine import open_engine
from service.factory import build_index
from service.settings import Settings

VARIANTS = {"naive (max-sim)": NAIVE, "default (rrf k=1 m=3)": {}}


def training_file(name: str, scratch: Path, spec: Spec | None = None) -> Path:
    """The labelled texts the baseline index holds: all of train, or BANKING77's index half."""
    spec = spec or SPECS[name]
    source = DATA / spec.folder / "train.jsonl"
    if not spec.holdout_from_train:
        return source
    kept = [line for line in source.read_text().splitlines() if line.strip()
            and hashlib.sha1(json.loads(line)["text"].encode()).digest()[0] % 2]
    path = scratch / f"{name}-train-indexed.jsonl"
    path.write_text("\n".join(kept) + "\n")
    return path


def report_part(name: str, spec: Spec) -> Dataset:
    """The texts every figure is measured on (bench/accuracy.py's report part)."""
    data = load_dataset(DATA / spec.folder / f"{spec.eval_split}.jsonl")
    if spec.holdout_from_train:
        data = replace(data, examples=[e for e in data.examples if _text_half(e.text) == "eval"])
    return split(data, name)[1]


def measure(settings: Settings, spec: Spec, data: Dataset) -> dict[str, dict]:
    """Metrics of each fixed-settings variant on the report part."""
    rows = {}
    for variant, overrides in VARIANTS.items():
        current = settings.model_copy(update={"top_k": spec.top_k, **overrides})
        run = run_eval(open_engine(current), data, EvalConfig(mode="retrieval", cache_dir=None))
        rows[variant] = {k.replace(f"@{spec.top_k}", "@K"): v for k, v in run["metrics"].items()}
        print(f"    {variant}: " + ", ".join(f"{c}={rows[variant][c]:.4f}" for c in COLUMNS
                                             if c in rows[variant]), flush=True)
    return rows


def run(name: str, root: Path, baseline_root: Path, config: TuneConfig, reuse: bool) -> dict:
    """Tune on one dataset (or reuse its model), re-index, score before and after."""
    base = Settings(_env_file=None, llm_base_url=None, llm_api_key=None)
    spec = SPECS[name]
    if not (root / "base" / spec.folder).exists() and (baseline_root / spec.folder).exists():
        shutil.copytree(baseline_root / spec.folder, root / "base" / spec.folder)
    settings, _, _ = build(spec, root / "base", base)  # no-op when the copy is current
    model_dir = root / "models" / (f"{name}-e{config.epochs}-p{config.max_pairs or 'all'}"
                                   f"-lr{config.learning_rate:g}")
    tuned_db = root / f"tuned-{model_dir.name}"
    if not (reuse and (model_dir / PROVENANCE_FILE).exists()):
        for stale in (model_dir, tuned_db):  # a rerun starts clean: new weights, new index
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory() as scratch:
            tune(build_index(settings), training_file(name, Path(scratch)), model_dir, config)
    tuning = json.loads((model_dir / PROVENANCE_FILE).read_text())
    print(f"  {name}: tuned in {tuning['mining_s'] + tuning['training_s']:.0f} s "
          f"({tuning['pairs']} pairs, {tuning['steps']} steps)", flush=True)
    tuned, index_s, vectors = build(spec, tuned_db, base.model_copy(
        update={"embedder": str(model_dir.resolve())}))
    data = report_part(name, spec)
    print(f"  {name} before ({len(data.examples)} texts):", flush=True)
    before = measure(settings, spec, data)
    print(f"  {name} after:", flush=True)
    after = measure(tuned, spec, data)
    return {"dataset": name, "report_n": len(data.examples), "top_k": spec.top_k,
            "vectors": vectors, "reindex_s": round(index_s, 1), "tuning": tuning,
            "before": before, "after": after}


def markdown(result: dict) -> str:
    """One before/after table for a dataset."""
    cols = [c for c in COLUMNS if c in next(iter(result["after"].values()))
            and c != "in_scope_accuracy"]
    lines = ["| variant | model | " + " | ".join(c.replace("@K", f"@{result['top_k']}")
                                                 for c in cols) + " |",
             "|---" * (len(cols) + 2) + "|"]
    for variant in VARIANTS:
        for model in ("before", "after"):
            cells = [f"{100 * result[model][variant][c]:.1f}" for c in cols]
            lines.append(f"| {variant} | {'MiniLM' if model == 'before' else 'tuned'} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["banking77", "clinc150", "hwu64",
                                                          "nlupp"])
    parser.add_argument("--root", type=Path, default=Path("/tmp/lr-tune"))
    parser.add_argument("--baseline-root", type=Path, default=Path("/tmp/acc"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-pairs", type=int, default=1500)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--reuse", action="store_true",
                        help="Reuse a model already tuned with these settings.")
    parser.add_argument("--out", type=Path, default=None, help="Also write JSON results here.")
    args = parser.parse_args()
    config = TuneConfig(epochs=args.epochs, max_pairs=args.max_pairs,
                        learning_rate=args.learning_rate)
    results = []
    for name in args.datasets:
        results.append(run(name, args.root, args.baseline_root, config, args.reuse))
        res = results[-1]
        tuning = {k: res["tuning"][k] for k in ("pairs", "label_pairs", "mined_negatives",
                                                 "steps", "mining_s", "training_s")}
        print(f"\n### {name} (report part n={res['report_n']}, K={res['top_k']})\n\n"
              f"{markdown(res)}\n\ntuning: {json.dumps(tuning)}, re-index "
              f"{res['reindex_s']} s\n", flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
