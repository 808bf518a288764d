"""Before/after figures for `labelrank tune` on the intent sets (docs/accuracy.md).

For each dataset: tune the default embedder on the texts the baseline index holds as examples
(BANKING77: the indexed half of `train`; the others: `train`), mining hard negatives from a copy
of that baseline index; re-index the same catalog and examples with the tuned model; then run
bench/accuracy.py's variants on the same report part as the baseline tables (texts that neither
the index nor the tuning saw). Baseline indexes are reused from --baseline-root when present.

    nice -n 10 .venv/bin/python bench/tuning.py --datasets banking77 --max-pairs 4000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import DATA, SPECS, build, evaluate_dataset, markdown

from service.factory import build_index
from service.settings import Settings
from service.tuning import TuneConfig, tune


def training_file(name: str, scratch: Path) -> Path:
    """The labelled texts the baseline index holds: all of train, or BANKING77's index half."""
    source = DATA / SPECS[name].folder / "train.jsonl"
    if not SPECS[name].holdout_from_train:
        return source
    kept = [line for line in source.read_text().splitlines() if line.strip()
            and hashlib.sha1(json.loads(line)["text"].encode()).digest()[0] % 2]
    path = scratch / f"{name}-train-indexed.jsonl"
    path.write_text("\n".join(kept) + "\n")
    return path


def run(name: str, root: Path, baseline_root: Path, config: TuneConfig) -> dict:
    """Tune on one dataset, re-index with the tuned model, evaluate; returns the results."""
    base = Settings(_env_file=None, llm_base_url=None, llm_api_key=None)
    spec = SPECS[name]
    base_db = root / "base" / spec.folder
    if not base_db.exists() and (baseline_root / spec.folder).exists():
        shutil.copytree(baseline_root / spec.folder, base_db)
    settings, _, _ = build(spec, root / "base", base)  # no-op when the copy is current
    model_dir = root / "models" / f"{name}-e{config.epochs}-p{config.max_pairs or 'all'}"
    tuned_db = root / f"tuned-{model_dir.name}"
    for stale in (model_dir, tuned_db):  # a rerun starts clean: new weights, new index
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        report = tune(build_index(settings), training_file(name, Path(scratch)), model_dir,
                      config)
    print(f"  {name}: tuned in {report.mining_s + report.training_s:.0f} s "
          f"({report.pairs} pairs, {report.steps} steps)", flush=True)
    tuned = base.model_copy(update={"embedder": str(model_dir.resolve())})
    result = evaluate_dataset(name, spec, tuned_db, tuned)
    result["tuning"] = {k: getattr(report, k) for k in (
        "pairs", "label_pairs", "mined_negatives", "steps", "mining_s", "training_s")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["banking77", "clinc150", "hwu64",
                                                          "nlupp"])
    parser.add_argument("--root", type=Path, default=Path("/tmp/lr-tune"))
    parser.add_argument("--baseline-root", type=Path, default=Path("/tmp/acc"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-pairs", type=int, default=4000)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--out", type=Path, default=None, help="Also write JSON results here.")
    args = parser.parse_args()
    config = TuneConfig(epochs=args.epochs, max_pairs=args.max_pairs,
                        learning_rate=args.learning_rate)
    results = [run(name, args.root, args.baseline_root, config) for name in args.datasets]
    print("\n" + markdown(results))
    for res in results:
        print(f"{res['dataset']} tuning: {json.dumps(res['tuning'])}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
