"""The learned head against the shipped retrieval path and a plain logistic regression, all on
the same frozen embeddings: trained on `train`, thresholds chosen on one half of `valid`,
figures on the other half (test splits are never read).

Single-label sets print in-scope accuracy (top-1, no threshold), out-of-scope AUROC (the top
candidate's score as the in-scope signal) and accuracy on all texts with the threshold chosen
on the dev half; multi-label sets (NLU++) print f1_samples with a global threshold chosen on
the dev half. "retrieval" is the shape default (reciprocal rank, k=1, best 3 hits) thresholded
on its best similarity; "+head" adds HeadStage (w x head probability + (1 - w) x similarity).

    python bench/head_accuracy.py --datasets clinc150 nlupp --root /tmp/labelrank-head
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from head_product import prepared  # bench/ is on sys.path as the script dir
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer

from retrieval.catalog import load_catalog, load_examples
from retrieval.fusion import Aggregation
from retrieval.head import HeadStage
from retrieval.head_train import train_index_head
from retrieval.index import LabelIndex
from retrieval.retriever import Retriever
from service.factory import build_index
from service.jobs.indexing import head_config, index_catalog
from service.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SHAPE_DEFAULT = Aggregation("rrf", 1.0, 3)
TOP_K = 30
Rows = list[tuple[str, str, list[str]]]  # id, text, labels


def rows(path: Path) -> Rows:
    out = []
    for line in path.read_text().splitlines():
        data = json.loads(line)
        out.append((str(data.get("id", len(out))), data["text"], list(data["labels"])))
    return out


def halves(items: Rows) -> tuple[Rows, Rows]:
    """(dev, report) by a stable hash of each text's id."""
    dev = [r for r in items if hashlib.sha1(f"head:{r[0]}".encode()).digest()[0] % 2]
    report = [r for r in items if not hashlib.sha1(f"head:{r[0]}".encode()).digest()[0] % 2]
    return dev, report


def built_index(folder: Path, train: Path, root: Path) -> LabelIndex:
    """The dataset's catalog with its train texts as examples, indexed once under `root`."""
    settings = Settings(_env_file=None, db=root / folder.name, head_train=False)
    catalog = load_catalog(folder / "catalog.jsonl")
    catalog = catalog.with_examples(load_examples(train, catalog, []))
    report, seconds = index_catalog(settings, catalog)
    print(f"# {folder.name}: index +{report.vectors_added} vectors in {seconds:.0f} s", flush=True)
    return build_index(settings)


def scored(shortlists) -> list[dict[str, float]]:
    """Each text's candidates as {label: score written for the threshold (similarity)}."""
    return [{c.label_id: c.similarity for c in row} for row in shortlists]


def single_label(name: str, scores: list[dict[str, float]], data: Rows, dev: list[int],
                 report: list[int]) -> dict[str, float]:
    """In-scope top-1, out-of-scope AUROC and thresholded accuracy on the report half."""
    top = [max(s.items(), key=lambda kv: kv[1]) if s else ("", -1.0) for s in scores]

    def accuracy(indices: list[int], threshold: float) -> float:
        right = [(top[i][1] >= threshold and top[i][0] in data[i][2])
                 or (top[i][1] < threshold and not data[i][2]) for i in indices]
        return float(np.mean(right))

    grid = sorted({round(top[i][1], 4) for i in dev})
    best = max(grid, key=lambda t: accuracy(dev, t)) if grid else 0.0
    in_scope = [i for i in report if data[i][2]]
    has_oos = any(not data[i][2] for i in report)
    return {"scorer": name, "in_scope": round(100 * np.mean([top[i][0] in data[i][2]
                                                             for i in in_scope]), 1),
            "oos_auroc": round(roc_auc_score([bool(data[i][2]) for i in report],
                                             [top[i][1] for i in report]), 4) if has_oos else None,
            "accuracy_thresholded": round(100 * accuracy(report, best), 1)}


def multi_label(name: str, scores: list[dict[str, float]], data: Rows, dev: list[int],
                report: list[int]) -> dict[str, float]:
    """f1_samples on the report half at the global threshold best on the dev half."""

    def f1(indices: list[int], threshold: float) -> float:
        out = []
        for i in indices:
            chosen = {label for label, s in scores[i].items() if s >= threshold}
            gold = set(data[i][2])
            if not chosen and not gold:
                out.append(1.0)
            else:
                out.append(2 * len(chosen & gold) / (len(chosen) + len(gold)))
        return float(np.mean(out))

    values = np.concatenate([list(scores[i].values()) for i in dev if scores[i]])
    grid = np.unique(np.quantile(values, np.linspace(0.5, 0.999, 120)).round(4))
    best = max(grid, key=lambda t: f1(dev, t))
    return {"scorer": name, "f1_samples": round(100 * f1(report, best), 1),
            "threshold": float(best)}


def logistic(index: LabelIndex, vectors: np.ndarray, multi: bool) -> list[dict[str, float]]:
    """scikit-learn's logistic regression (C=10) on the index's example vectors: per text,
    every label's probability."""
    by_text: dict[str, tuple[np.ndarray, set[str]]] = {}
    for stored in index.iter_vectors(kind="example"):
        by_text.setdefault(stored.text, (stored.vector, set()))[1].add(stored.label_id)
    x = np.stack([v for v, _ in by_text.values()])
    if multi:
        binarizer = MultiLabelBinarizer()
        y = binarizer.fit_transform([sorted(labels) for _, labels in by_text.values()])
        model = OneVsRestClassifier(LogisticRegression(C=10, max_iter=1000)).fit(x, y)
        classes = list(binarizer.classes_)
    else:
        model = LogisticRegression(C=10, max_iter=1000).fit(
            x, [min(labels) for _, labels in by_text.values()])
        classes = list(model.classes_)
    probabilities = model.predict_proba(vectors)
    return [dict(zip(classes, row.tolist(), strict=True)) for row in probabilities]


def run(folder: Path, root: Path, modes: list[str], weights: list[float],
        hard_negatives: list[int]) -> None:
    # A set without `valid` (BANKING77) holds out the stable fifth of train head_product does.
    train, valid = prepared(folder.name, root / "data", 10**9, folder.parent)
    index = built_index(folder, train, root)
    data = rows(valid)
    dev_rows, _ = halves(data)
    dev_ids = {r[0] for r in dev_rows}
    dev = [i for i, r in enumerate(data) if r[0] in dev_ids]
    report = [i for i, r in enumerate(data) if r[0] not in dev_ids]
    multi = any(len(r[2]) > 1 for r in data)
    measure = multi_label if multi else single_label
    retriever = Retriever(index, SHAPE_DEFAULT, neighbours=100, evidence=False)
    texts = [r[1] for r in data]
    search = retriever.search(texts, TOP_K, with_vectors=False)
    shortlists = retriever.rank(search)
    recall = np.mean([bool(set(r[2]) & {c.label_id for c in s})
                      for r, s in zip(data, shortlists, strict=True) if r[2]])
    print(f"# {folder.name}: {len(dev)} dev / {len(report)} report texts; candidate recall@{TOP_K} "
          f"{100 * recall:.1f}", flush=True)
    print(json.dumps({"set": folder.name, **measure("retrieval", scored(shortlists), data, dev,
                                               report)}), flush=True)
    defaults = head_config(Settings(_env_file=None))
    for mode, hard in itertools.product(modes, hard_negatives or [defaults.hard_negatives]):
        # No time cap: a loaded machine must not cut the epochs the figures are about.
        config = replace(defaults, mode=mode, hard_negatives=hard, max_seconds=1e9)
        info = train_index_head(index, config)
        assert info is not None
        print(f"# {folder.name}: head {mode}, {hard} hard negatives: {info.examples} examples, "
              f"{info.labels} labels, {info.epochs} epochs, {info.seconds} s (not a timing: "
              "shared cores)", flush=True)
        for weight in weights:
            ranked = retriever.rank(search, stages=[HeadStage(weight)])
            name = f"+head({mode},h={hard},w={weight:g})"
            print(json.dumps({"set": folder.name, **measure(name, scored(ranked), data, dev,
                                                       report)}), flush=True)
    started = time.perf_counter()
    probabilities = logistic(index, np.asarray(search.vectors), multi)
    print(json.dumps({"set": folder.name, **measure("logistic regression C=10", probabilities, data,
                                               dev, report),
                      "fit_s": round(time.perf_counter() - started, 1)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["clinc150", "nlupp"])
    parser.add_argument("--data", type=Path, default=DATA,
                        help="the folder holding each set's catalog, train and valid files")
    parser.add_argument("--root", type=Path, default=Path("/tmp/labelrank-head"))
    parser.add_argument("--modes", nargs="+", default=["ovr", "softmax"])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--hard-negatives", type=int, nargs="+", default=[],
                        help="hard negatives per example to compare (default: Settings')")
    args = parser.parse_args()
    for folder in args.datasets:
        run(args.data / folder, args.root, args.modes, args.weights, args.hard_negatives)


if __name__ == "__main__":
    main()
