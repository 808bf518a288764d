"""The learned head through the product's own path, against the shipped path before it and a
scikit-learn logistic regression on the same frozen MiniLM embeddings, in one run per set.

Per set: `labelrank index` of the catalog with the train examples (the head is trained and the
index calibrates itself, as a user gets it), then on the report half of `valid` (half b by
`eval.datasets.in_half`; the dev half a is only for `calibrate` and the reference's threshold):

- shipped: the self-calibrated setting searched without the head (what main gave before it);
- default: the index as `labelrank index` left it (self-calibrated, head included);
- labeled: `labelrank calibrate` on the dev half (every lever, the head's weight included);
- LR: LogisticRegression(C=10) on the train examples' embeddings; single-label sets threshold
  its top probability for "none" (chosen on the dev half), multi-label sets a per-text global
  probability threshold (one-vs-rest);
- fit (with `--fit-minutes M`): `labelrank fit` of the catalog and the same train file within M
  minutes, in a directory of its own (it holds its own dev split out of train, tunes, trains
  the head on the kept model and calibrates), scored on the same report half; its wall time
  and what it kept are in the row.

A set without `valid` (BANKING77) gives a stable fifth of `train` as valid; GoEmotions indexes a
stable sample of `--max-train` train rows (43,410 would take most of an hour to embed here).
Test splits are never read.

    python bench/head_product.py --datasets clinc150 hwu64 --root /tmp/labelrank-head-product
    python bench/head_product.py --datasets hwu64 --fit-minutes 10 --root /tmp/lr-head-product
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer

from eval.calibrate import calibrate
from eval.datasets import Dataset, load_dataset
from eval.metrics import evaluate
from retrieval.calibration.pseudo_queries import COMPOSED_SHARE
from retrieval.calibration.scoring import Calibration
from retrieval.calibration.work import embedding_cost
from retrieval.catalog import load_catalog, load_examples
from service.factory import build_index, build_pipeline, search_space
from service.jobs.fit import FitConfig, fit
from service.jobs.indexing import index_catalog, train_head
from service.jobs.self_calibration import calibrate_after_index, self_calibrate
from service.pipeline import ClassifyOptions
from service.results import ClassifyResult
from service.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _bucket(key: str, salt: str) -> int:
    return hashlib.sha1(f"{salt}:{key}".encode()).digest()[0]


def prepared(name: str, root: Path, max_train: int, data: Path) -> tuple[Path, Path]:
    """(train, valid) files for the set: its own, or a fifth of train as valid."""
    train, valid = data / name / "train.jsonl", data / name / "valid.jsonl"
    if not train.is_file():
        raise SystemExit(f"{train} not found: pass --data DIR (the shared datasets folder)")
    lines = train.read_text().splitlines()
    own_valid = valid.is_file()
    kept, held = [], []
    for line in lines:
        key = str(json.loads(line).get("id") or line)
        (held if not own_valid and _bucket(key, "valid") < 52 else kept).append(line)
    if len(kept) > max_train:
        kept = sorted(kept, key=lambda line: _bucket(line, "sample"))[:max_train]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("\n".join(kept) + "\n")
    if not own_valid:
        (out / "valid.jsonl").write_text("\n".join(held) + "\n")
        valid = out / "valid.jsonl"
    return out / "train.jsonl", valid


def product_eval(settings: Settings, data: Dataset, single: bool) -> dict[str, float]:
    """The retrieval-only answers of the pipeline these settings open, scored."""
    pipeline = build_pipeline(settings)
    texts = [ex.text for ex in data.examples]
    started = time.perf_counter()
    outcomes = pipeline.classify_batch(texts, ClassifyOptions(mode="retrieval"))
    seconds = time.perf_counter() - started
    gold = [list(ex.labels) for ex in data.examples]
    # A text the pipeline refuses (empty, too long) counts as answered with nothing.
    answered = [o if isinstance(o, ClassifyResult) else None for o in outcomes]
    predicted = [[s.id for s in o.labels] if o else [] for o in answered]
    ranked = [[s.id for s in o.candidates] if o else [] for o in answered]
    top = [max((s.similarity or 0.0 for s in o.candidates), default=0.0) if o else 0.0
           for o in answered]
    figures = evaluate(gold, predicted, ranked, candidate_k=30)
    row = {"errors": answered.count(None), "f1_samples": figures["f1_samples"],
           "candidate_recall@30": figures.get("candidate_recall@30", float("nan")),
           "texts_per_s": len(texts) / seconds,
           "retrieval": pipeline.retriever.describe()}
    if single:
        in_scope = [i for i, g in enumerate(gold) if g]
        row["in_scope_top1"] = float(np.mean([ranked[i][:1] == gold[i] for i in in_scope]))
        row["accuracy"] = figures["accuracy"]
        if len(in_scope) < len(gold):
            row["oos_auroc"] = roc_auc_score([bool(g) for g in gold], top)
    return row


def reference(train: Path, catalog, settings: Settings, dev: Dataset, report: Dataset,
              single: bool) -> dict[str, float]:
    """Logistic regression on the frozen embeddings of the train examples."""
    index = build_index(settings)
    rows = [json.loads(line) for line in train.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["labels"] and all(lab in catalog.labels for lab in r["labels"])]
    embed = index.embedder.embed
    x = embed([r["text"] for r in rows])
    started = time.perf_counter()
    if single:
        model = LogisticRegression(C=10, max_iter=2000).fit(x, [r["labels"][0] for r in rows])
    else:
        binarizer = MultiLabelBinarizer().fit([r["labels"] for r in rows])
        model = OneVsRestClassifier(LogisticRegression(C=10, max_iter=2000)).fit(
            x, binarizer.transform([r["labels"] for r in rows]))
    fit_s = time.perf_counter() - started
    classes = list(model.classes_) if single else list(binarizer.classes_)

    def scored(data: Dataset) -> tuple[np.ndarray, list[list[str]]]:
        return (model.predict_proba(embed([ex.text for ex in data.examples])),
                [list(ex.labels) for ex in data.examples])

    (dev_p, dev_gold), (rep_p, rep_gold) = scored(dev), scored(report)
    grid = np.arange(0.0, 1.0, 0.01)
    if single:
        def accuracy(p: np.ndarray, gold: list[list[str]], t: float) -> float:
            top = p.argmax(1)
            answer = [[classes[k]] if p[i, k] >= t else [] for i, k in enumerate(top)]
            return float(np.mean([a == g for a, g in zip(answer, gold, strict=True)]))

        best = max(grid, key=lambda t: accuracy(dev_p, dev_gold, t))
        in_scope = [i for i, g in enumerate(rep_gold) if g]
        row = {"in_scope_top1": float(np.mean([[classes[rep_p[i].argmax()]] == rep_gold[i]
                                                 for i in in_scope])),
               "accuracy": accuracy(rep_p, rep_gold, best), "fit_s": fit_s}
        if len(in_scope) < len(rep_gold):
            row["oos_auroc"] = roc_auc_score([bool(g) for g in rep_gold], rep_p.max(1))
        return row

    def f1(p: np.ndarray, gold: list[list[str]], t: float) -> float:
        answers = [[classes[k] for k in np.flatnonzero(row >= t)] for row in p]
        return float(np.mean([1.0 if not a and not g else
                              2 * len(set(a) & set(g)) / (len(a) + len(g))
                              for a, g in zip(answers, gold, strict=True)]))

    best = max(grid, key=lambda t: f1(dev_p, dev_gold, t))
    return {"f1_samples": f1(rep_p, rep_gold, best), "fit_s": fit_s}


def fitted_row(name: str, root: Path, train: Path, data: Path, report: Dataset, single: bool,
               minutes: float) -> dict[str, object]:
    """`labelrank fit` of the catalog and the train file in its own directory, scored."""
    settings = Settings(_env_file=None, db=root / name / "fit-db")
    started = time.perf_counter()
    done = fit(settings, data / name / "catalog.jsonl", [train], None, FitConfig(minutes=minutes))
    return {**product_eval(settings, report, single), "wall_s": round(time.perf_counter()
                                                                      - started),
            "model": done.model, "why": done.why,
            "stages_s": {stage: round(seconds) for stage, seconds in done.seconds.items()}}


def run(name: str, root: Path, max_train: int, data: Path,
        fit_minutes: float | None = None, none_share: float | None = None,
        multi_share: float | None = None) -> dict[str, object]:
    """Every row of one set (`none_share`: the index's self-calibration weighs its
    out-of-scope pseudo-queries as that share, LABELRANK_SELF_CALIBRATION_NONE_SHARE;
    `multi_share`: that share of them joins several labels, and a "default_builtin_multi" row
    self-calibrates with the built-in share in the same run)."""
    train, valid = prepared(name, root, max_train, data)
    stated = {} if multi_share is None else {"self_calibration_multi_share": multi_share}
    settings = Settings(_env_file=None, db=root / name / "db",
                        self_calibration_none_share=none_share, **stated)
    catalog = load_catalog(data / name / "catalog.jsonl")
    catalog = catalog.with_examples(load_examples(train, catalog, []))
    dev, report = load_dataset(valid, half="a"), load_dataset(valid, half="b")
    single = all(len(ex.labels) <= 1 for ex in dev.examples + report.examples)
    started = time.perf_counter()
    embedded, embed_s = index_catalog(settings, catalog)
    index = build_index(settings)
    head_line = train_head(settings, index)
    head_s = time.perf_counter() - started
    # As `labelrank index` does: a budget of the embedding's work when that is over 30 s.
    calibrate_after_index(settings, index, embed_s,
                          embedding_cost(embedded.vectors_added, embedded.chars_added))
    index_s = time.perf_counter() - started
    rows: dict[str, object] = {"set": name, "train": len(train.read_text().splitlines()),
                               "report_n": len(report.examples), "index_s": round(index_s, 1),
                               "head": head_line, "index_and_head_s": round(head_s, 1)}
    without = self_calibrate(settings, index, search_space(settings, levers={"head_weight": ()}))
    rows["shipped"] = product_eval(_applied(settings, without.best), report, single)
    rows["default"] = product_eval(settings, report, single)
    if multi_share is not None:
        builtin = self_calibrate(settings, index, budget_s=settings.self_calibration_seconds,
                                 multi_share=COMPOSED_SHARE)
        rows["default_builtin_multi"] = product_eval(_applied(settings, builtin.best), report,
                                                     single)
    best, _ = calibrate(build_pipeline(settings), dev, settings=settings)
    rows["labeled"] = product_eval(_applied(settings, best), report, single)
    rows["LR"] = reference(train, catalog, settings, dev, report, single)
    if fit_minutes:
        rows["fit"] = fitted_row(name, root, train, data, report, single, fit_minutes)
    return rows


def _applied(settings: Settings, best: Calibration | None) -> Settings:
    """Settings with a calibration's choice set explicitly (over what the index saved)."""
    return settings if best is None else settings.model_copy(update=best.settings())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["clinc150", "banking77", "hwu64",
                                                          "nlupp", "banking77_oos", "goemotions"])
    parser.add_argument("--root", type=Path, default=Path("/tmp/labelrank-head-product"))
    parser.add_argument("--max-train", type=int, default=16_000)
    parser.add_argument("--out", type=Path, default=None, help="Also write JSON lines here.")
    parser.add_argument("--data", type=Path, default=DATA, help="The shared datasets folder.")
    parser.add_argument("--fit-minutes", type=float, default=None,
                        help="Also run `labelrank fit` within this many minutes (a fit row).")
    parser.add_argument("--none-share", type=float, default=None, help="The out-of-scope share "
                        "self-calibration weighs its none pseudo-queries as (shipped and default "
                        "rows; LABELRANK_SELF_CALIBRATION_NONE_SHARE).")
    parser.add_argument("--multi-share", type=float, default=None, help="The share of texts "
                        "with several labels self-calibration composes (default row; "
                        "LABELRANK_SELF_CALIBRATION_MULTI_SHARE), beside a default row with the "
                        "built-in share.")
    args = parser.parse_args()
    for name in args.datasets:
        rows = run(name, args.root, args.max_train, args.data, args.fit_minutes,
                   args.none_share, args.multi_share)
        line = json.dumps(rows, default=lambda v: round(v, 4) if isinstance(v, float) else v)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as out:
                out.write(line + "\n")


if __name__ == "__main__":
    main()
