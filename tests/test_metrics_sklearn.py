"""eval/metrics.py against scikit-learn's implementations on random multi-label data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, jaccard_score, precision_recall_fscore_support
from sklearn.preprocessing import MultiLabelBinarizer

from eval.metrics import evaluate

LABELS = [f"L{i}" for i in range(12)]


def random_sets(rng: np.random.Generator, n: int, min_size: int) -> list[list[str]]:
    """`n` label lists of `min_size` to 4 labels, in random order."""
    return [list(rng.choice(LABELS, size=rng.integers(min_size, 5), replace=False))
            for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_micro_and_macro_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gold, predicted = random_sets(rng, 200, 0), random_sets(rng, 200, 0)
    ours = evaluate(gold, predicted, predicted)
    binarizer = MultiLabelBinarizer(classes=sorted({x for row in gold + predicted for x in row}))
    y_true, y_pred = binarizer.fit_transform(gold), binarizer.transform(predicted)
    for average in ("micro", "macro"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=0)
        assert ours[f"precision_{average}"] == pytest.approx(precision)
        assert ours[f"recall_{average}"] == pytest.approx(recall)
        # Macro F1 is the mean of per-label F1s on both sides, not the F1 of the means.
        assert ours[f"f1_{average}"] == pytest.approx(f1)
    assert ours["exact_match"] == pytest.approx(accuracy_score(y_true, y_pred))


@pytest.mark.parametrize("seed", range(5))
def test_per_text_averages_match_sklearn(seed: int) -> None:
    # Every text has gold and predictions: where sklearn's zero_division and our documented
    # empty-set conventions cannot differ.
    rng = np.random.default_rng(100 + seed)
    gold, predicted = random_sets(rng, 200, 1), random_sets(rng, 200, 1)
    ours = evaluate(gold, predicted, predicted)
    binarizer = MultiLabelBinarizer(classes=LABELS)
    y_true, y_pred = binarizer.fit_transform(gold), binarizer.transform(predicted)
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="samples")
    assert ours["precision_samples"] == pytest.approx(precision)
    assert ours["recall_samples"] == pytest.approx(recall)
    assert ours["f1_samples"] == pytest.approx(f1)
    assert ours["jaccard"] == pytest.approx(jaccard_score(y_true, y_pred, average="samples"))


def test_single_label_accuracy_matches_sklearn() -> None:
    rng = np.random.default_rng(7)
    gold = [[str(x)] for x in rng.choice(LABELS, 300)]
    predicted = [[str(x)] for x in rng.choice(LABELS, 300)]
    ours = evaluate(gold, predicted, predicted)
    assert ours["accuracy"] == pytest.approx(
        accuracy_score([g[0] for g in gold], [p[0] for p in predicted]))


@pytest.mark.parametrize("seed", range(3))
def test_none_auroc_matches_sklearn(seed: int) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(300 + seed)
    gold = [[] if rng.random() < 0.2 else ["L1"] for _ in range(400)]
    # Rounded, so that ties between in-scope and out-of-scope texts occur.
    scores = [round(float(rng.normal(0.6 if g else 0.4, 0.15)), 2) for g in gold]
    ours = evaluate(gold, gold, gold, in_scope_score=scores)
    assert ours["none_auroc"] == pytest.approx(roc_auc_score([bool(g) for g in gold], scores))
