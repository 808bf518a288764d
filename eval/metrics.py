"""Ranking and selection metrics for multi-label tagging against a label catalog."""

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from retrieval.iterables import dedupe

__all__ = ["auroc", "cross_branch", "evaluate", "is_single_label", "per_label", "recall_curve"]

Labels = Sequence[str]


def _mean(values: Iterable[float]) -> float:
    """Arithmetic mean, 0.0 for an empty input."""
    items = list(values)
    return math.fsum(items) / len(items) if items else 0.0


def _ratio(num: float, den: float) -> float:
    """num / den as a float, 0.0 when den is zero."""
    return float(num) / den if den else 0.0


def _f1(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall, 0.0 when both are zero."""
    return _ratio(2 * precision * recall, precision + recall)


def _check_labels(labels: Labels) -> Labels:
    """Reject a bare string, which would otherwise be read as a sequence of characters."""
    if isinstance(labels, str):
        raise TypeError(f"expected a sequence of label ids, got the string {labels!r}")
    return labels


def _dedupe(labels: Labels) -> list[str]:
    """Labels with duplicates removed, keeping first occurrence."""
    return dedupe(_check_labels(labels))


def _check_lengths(**columns: Sequence[Labels]) -> int:
    """Number of texts, raising if the per-text columns disagree."""
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"per-text inputs differ in length: {lengths}")
    return next(iter(lengths.values()))


def is_single_label(gold: Sequence[Labels]) -> bool:
    """True if every text has at most one gold label."""
    return all(len(set(_check_labels(g))) <= 1 for g in gold)


def _hits_by_rank(gold: set[str], ranked: Labels) -> list[int]:
    """Cumulative |gold ∩ ranked[:k]| for k = 1..len(ranked)."""
    seen: set[str] = set()
    hits, out = 0, []
    for label in _check_labels(ranked):
        # A repeated id in the shortlist must not count as a second hit.
        if label in gold and label not in seen:
            hits += 1
        seen.add(label)
        out.append(hits)
    return out


def _hits_at(cumulative: list[int], k: int) -> int:
    """|gold ∩ ranked[:k]| from cumulative hits; lists shorter than k contribute all they have."""
    if k <= 0 or not cumulative:
        return 0
    return cumulative[min(k, len(cumulative)) - 1]


def recall_curve(gold: Sequence[Labels], ranked: Sequence[Labels], max_k: int = 100) -> list[float]:
    """Candidate recall@k for k = 1..max_k, averaged over texts with non-empty gold."""
    _check_lengths(gold=gold, ranked=ranked)
    if max_k < 0:
        raise ValueError(f"max_k must be >= 0, got {max_k}")
    rows = [(set(g), _hits_by_rank(set(g), r)) for g, r in zip(gold, ranked, strict=True)]
    rows = [(g, cum) for g, cum in rows if g]
    return [_mean(_hits_at(cum, k) / len(g) for g, cum in rows) for k in range(1, max_k + 1)]


def _label_counts(
    gold: Sequence[Labels], predicted: Sequence[Labels]
) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Per-label true-positive, false-positive and false-negative counts."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for g_raw, p_raw in zip(gold, predicted, strict=True):
        g, p = set(_check_labels(g_raw)), set(_dedupe(p_raw))
        tp.update(g & p)
        fp.update(p - g)
        fn.update(g - p)
    return tp, fp, fn


def _label_stats(
    tp: Counter[str], fp: Counter[str], fn: Counter[str]
) -> dict[str, dict[str, float]]:
    """Per-label scores from counts, with 0/0 taken as 0."""
    out: dict[str, dict[str, float]] = {}
    for label in sorted(set(tp) | set(fp) | set(fn)):
        precision = _ratio(tp[label], tp[label] + fp[label])
        recall = _ratio(tp[label], tp[label] + fn[label])
        out[label] = {
            "precision": precision,
            "recall": recall,
            "f1": _f1(precision, recall),
            "support": float(tp[label] + fn[label]),
        }
    return out


def per_label(gold: Sequence[Labels], predicted: Sequence[Labels]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and gold support for every label seen in gold or predicted."""
    _check_lengths(gold=gold, predicted=predicted)
    return _label_stats(*_label_counts(gold, predicted))


def _sample_scores(g: set[str], p: set[str]) -> tuple[float, float, float, float]:
    """Per-text precision, recall, F1 and Jaccard with the documented empty-set conventions."""
    if not g and not p:
        return 1.0, 1.0, 1.0, 1.0
    if not g or not p:
        return 0.0, 0.0, 0.0, 0.0
    inter = len(g & p)
    precision, recall = inter / len(p), inter / len(g)
    return precision, recall, _f1(precision, recall), inter / len(g | p)


def cross_branch(gold: Sequence[set[str]], predicted: Sequence[set[str]],
                 branches: Mapping[str, str]) -> dict[str, float]:
    """Texts whose gold labels lie in more than one branch, and the share of them whose gold
    labels were all predicted (a label missing from `branches` is its own branch)."""
    spanning = [(g, p) for g, p in zip(gold, predicted, strict=True)
                if len({branches.get(label, label) for label in g}) > 1]
    if not spanning:
        return {"n_multi_branch": 0}
    return {"n_multi_branch": len(spanning),
            "multi_branch_recovered": _mean(float(g <= p) for g, p in spanning)}


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half):
    how well the score separates the two, whatever threshold is chosen later."""
    if not positive or not negative:
        return 0.0
    ordered = sorted([(s, 1) for s in positive] + [(s, 0) for s in negative])
    rank_sum, start = 0.0, 0
    while start < len(ordered):
        end = start
        while end < len(ordered) and ordered[end][0] == ordered[start][0]:
            end += 1
        mid_rank = (start + 1 + end) / 2  # tied scores share their average rank
        rank_sum += mid_rank * sum(label for _, label in ordered[start:end])
        start = end
    n_pos, n_neg = len(positive), len(negative)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def evaluate(
    gold: Sequence[Labels],
    predicted: Sequence[Labels],
    ranked: Sequence[Labels],
    ks: Sequence[int] = (1, 5, 10),
    candidate_k: int | None = None,
    branches: Mapping[str, str] | None = None,
    in_scope_score: Sequence[float] | None = None,
) -> dict[str, float]:
    """All harness metrics for one run; see docs/metrics.md for definitions. `branches` maps a
    label id to its branch (its root ancestor) for the cross-branch metrics; `in_scope_score`
    is each text's evidence of being in scope (its best candidate's similarity), for
    `none_auroc`."""
    n = _check_lengths(gold=gold, predicted=predicted, ranked=ranked)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k in ks must be >= 1, got {list(ks)}")
    if candidate_k is not None and candidate_k < 1:
        raise ValueError(f"candidate_k must be >= 1, got {candidate_k}")

    golds = [set(_check_labels(g)) for g in gold]
    preds = [_dedupe(p) for p in predicted]
    pred_sets = [set(p) for p in preds]
    out: dict[str, float] = {"n": n, "n_none": sum(1 for g in golds if not g)}
    out.update(_ranking_metrics(golds, ranked, ks, candidate_k))
    out.update(_set_metrics(gold, preds, golds, pred_sets))
    out.update(_none_metrics(golds, pred_sets, in_scope_score))
    if branches is not None:
        out.update(cross_branch(golds, pred_sets, branches))
    if is_single_label(gold):
        out.update(_accuracy(golds, preds))
    return out


def _ranking_metrics(golds: Sequence[set[str]], ranked: Sequence[Labels], ks: Sequence[int],
                     candidate_k: int | None) -> dict[str, float]:
    """Candidate recall, R@k, RP@k and P@k over the texts that have something to find."""
    scoped = [(g, _hits_by_rank(g, r)) for g, r in zip(golds, ranked, strict=True) if g]
    cand_k = candidate_k if candidate_k is not None else max((len(r) for r in ranked), default=0)
    out = {f"candidate_recall@{cand_k}": _mean(_hits_at(c, cand_k) / len(g) for g, c in scoped)}
    for k in ks:
        out[f"R@{k}"] = _mean(_hits_at(c, k) / len(g) for g, c in scoped)
        out[f"RP@{k}"] = _mean(_hits_at(c, k) / min(k, len(g)) for g, c in scoped)
        out[f"P@{k}"] = _mean(_hits_at(c, k) / k for g, c in scoped)
    return out


def _set_metrics(gold: Sequence[Labels], preds: Sequence[Labels], golds: Sequence[set[str]],
                 pred_sets: Sequence[set[str]]) -> dict[str, float]:
    """Precision, recall and F1 of the chosen sets: micro, macro, per sample; Jaccard, exact."""
    tp, fp, fn = _label_counts(gold, preds)
    n_tp, n_fp, n_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    out = {"precision_micro": _ratio(n_tp, n_tp + n_fp), "recall_micro": _ratio(n_tp, n_tp + n_fn)}
    out["f1_micro"] = _f1(out["precision_micro"], out["recall_micro"])
    labels = _label_stats(tp, fp, fn).values()
    for name in ("precision", "recall", "f1"):
        out[f"{name}_macro"] = _mean(stats[name] for stats in labels)
    samples = [_sample_scores(g, p) for g, p in zip(golds, pred_sets, strict=True)]
    for i, name in enumerate(("precision_samples", "recall_samples", "f1_samples", "jaccard")):
        out[name] = _mean(s[i] for s in samples)
    out["exact_match"] = _mean(float(g == p) for g, p in zip(golds, pred_sets, strict=True))
    return out


def _none_metrics(golds: Sequence[set[str]], pred_sets: Sequence[set[str]],
                  in_scope_score: Sequence[float] | None) -> dict[str, float]:
    """How well "none of the labels" is answered, when gold or predictions hold such texts."""
    n, n_none = len(golds), sum(1 for g in golds if not g)
    n_pred_none = sum(1 for p in pred_sets if not p)
    out: dict[str, float] = {}
    if n_none or n_pred_none:
        both_none = sum(1 for g, p in zip(golds, pred_sets, strict=True) if not g and not p)
        out["n_pred_none"] = n_pred_none
        out["none_precision"] = _ratio(both_none, n_pred_none)
        out["none_recall"] = _ratio(both_none, n_none)
    if in_scope_score is not None and 0 < n_none < n:
        _check_lengths(gold=golds, in_scope_score=in_scope_score)
        out["none_auroc"] = auroc([s for s, g in zip(in_scope_score, golds, strict=True) if g],
                                  [s for s, g in zip(in_scope_score, golds, strict=True) if not g])
    return out


def _accuracy(golds: Sequence[set[str]], preds: Sequence[Labels]) -> dict[str, float]:
    """Single-label accuracy (the top prediction), overall and on in-scope texts."""
    correct = [(bool(g), set(p[:1]) == g) for g, p in zip(golds, preds, strict=True)]
    return {"accuracy": _mean(float(ok) for _, ok in correct),
            "in_scope_accuracy": _mean(float(ok) for in_scope, ok in correct if in_scope)}
