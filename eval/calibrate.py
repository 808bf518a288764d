"""`labelrank calibrate`: choose aggregation, threshold and label limit on a dev set."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np

from eval.datasets import Dataset, refuse_test_split
from eval.metrics import is_single_label
from retrieval.branches import BranchConfig, BranchStage
from retrieval.decision import Threshold, top_scores
from retrieval.fusion import Aggregation, Candidate
from retrieval.retriever import Retriever
from retrieval.taxonomy import taxonomy_of
from service.pipeline import Pipeline

AGGREGATIONS = [Aggregation("max", 0, None)] + [
    Aggregation("rrf", k, m) for k in (1.0, 10.0, 60.0) for m in (1, 3, 5, None)]
SIMILARITIES = [round(float(x), 3) for x in np.arange(0.10, 0.901, 0.02)]
RELATIVES = (0.0, 0.25, 0.5, 0.75, 0.9)
METRICS = ("f1_samples", "jaccard", "accuracy", "f1_micro", "candidate_recall")
BRANCH_COUNTS = (1, 2, 3, 5)
MAX_BRANCH_DEPTH = 3
# Branch mode must beat flat by more than dev-set noise (or match it and lift candidate recall,
# the ceiling of LLM mode, by as much): a 0.2-point dev win on CLINC150 was a loss on held-out.
BRANCH_MARGIN = 0.005


@dataclass(frozen=True)
class Calibration:
    """The chosen retrieval settings and the dev-set score they reached."""

    aggregation: Aggregation
    threshold: Threshold
    metric: str
    value: float
    candidate_recall: float
    branching: BranchConfig | None = None

    def describe(self) -> str:
        """The retrieval variant, e.g. `rrf(k=1,m=3)+branch(d=0,b=2,w=4)`."""
        method = self.aggregation.describe()
        return f"{method}+{self.branching.describe()}" if self.branching else method

    def settings(self) -> dict[str, object]:
        """As Settings fields, the form saved beside the index."""
        agg = self.aggregation
        branch = self.branching or BranchConfig()
        return {"aggregation": agg.method, "rrf_k": agg.k, "max_hits_per_label": agg.max_hits or 0,
                "threshold": self.threshold.min_similarity,
                "relative_threshold": self.threshold.relative,
                "max_labels": self.threshold.max_labels,
                "relative_per_branch": self.threshold.per_branch,
                "retrieval_mode": "branch" if self.branching else "flat",
                "branch_depth": branch.depth, "branches": branch.branches}


class Shortlists:
    """Shortlists as matrices (texts x rank), so every threshold rule is scored at numpy speed."""

    def __init__(self, shortlists: Sequence[Sequence[Candidate]],
                 gold: Sequence[Sequence[str]],
                 branch_of: Callable[[str], str] | None = None) -> None:
        width = max((len(s) for s in shortlists), default=1) or 1
        rows = len(shortlists)
        self.similarity = np.full((rows, width), -np.inf)
        self.relative = np.full((rows, width), -np.inf)
        self.relative_in_branch = np.full((rows, width), -np.inf)
        self.correct = np.zeros((rows, width), dtype=bool)
        for row, (cands, labels) in enumerate(zip(shortlists, gold, strict=True)):
            tops = top_scores(cands)
            branch_tops = top_scores(cands, branch_of) if branch_of else tops
            for col, cand in enumerate(cands):
                self.similarity[row, col] = cand.similarity
                self.relative[row, col] = cand.score / tops[col] if tops[col] else 0.0
                self.relative_in_branch[row, col] = (cand.score / branch_tops[col]
                                                     if branch_tops[col] else 0.0)
                self.correct[row, col] = cand.label_id in labels
        self.n_gold = np.array([len(set(g)) for g in gold])

    def score(self, rule: Threshold, metric: str) -> float:
        """The metric of the rule's predictions, with the conventions of eval.metrics."""
        relative = self.relative_in_branch if rule.per_branch else self.relative
        passing = (self.similarity >= rule.min_similarity) & (relative >= rule.relative)
        chosen = passing & (np.cumsum(passing, axis=1) <= rule.max_labels)
        tp = (chosen & self.correct).sum(axis=1)
        n_pred = chosen.sum(axis=1)
        both_empty = (n_pred == 0) & (self.n_gold == 0)
        if metric == "accuracy":
            first = np.argmax(chosen, axis=1)
            first_ok = self.correct[np.arange(len(first)), first] & (self.n_gold == 1)
            return float(np.mean(both_empty | ((n_pred >= 1) & first_ok)))
        if metric == "f1_micro":
            fp, fn = (n_pred - tp).sum(), (self.n_gold - tp).sum()
            return float(2 * tp.sum() / (2 * tp.sum() + fp + fn)) if tp.sum() else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            if metric == "jaccard":
                per_text = tp / (n_pred + self.n_gold - tp)
            else:  # f1_samples
                per_text = 2 * tp / (n_pred + self.n_gold)
        return float(np.mean(np.where(both_empty, 1.0, np.nan_to_num(per_text))))


def best_threshold(shortlists: Shortlists, metric: str, max_labels_grid: Sequence[int],
                   per_branch: Sequence[bool] = (False,)) -> tuple[Threshold, float]:
    """The threshold rule that scores best on these shortlists (ties: the first found)."""
    best, best_value = Threshold(), -1.0
    for max_labels in max_labels_grid:
        scopes = per_branch if max_labels > 1 else (False,)
        for scope, relative in ((s, r) for s in scopes
                                for r in (RELATIVES if max_labels > 1 else (0.0,))):
            for similarity in SIMILARITIES:
                rule = Threshold(similarity, relative, max_labels, scope)
                value = shortlists.score(rule, metric)
                if value > best_value + 1e-12:
                    best, best_value = rule, value
    return best, best_value


def candidate_recall(shortlists: Sequence[Sequence[Candidate]],
                     gold: Sequence[Sequence[str]]) -> float:
    """Mean share of gold labels on the shortlist, over texts with gold labels."""
    shares = [len(set(g) & {c.label_id for c in s}) / len(set(g))
              for s, g in zip(shortlists, gold, strict=True) if g]
    return float(np.mean(shares)) if shares else 0.0


def calibrate(pipeline: Pipeline, dataset: Dataset, metric: str = "auto",
              top_k: int | None = None,
              per_branch: bool = True) -> tuple[Calibration, list[Calibration]]:
    """Search every aggregation and threshold, then flat against branch retrieval with the best
    aggregation; return the best and the best per variant (see BRANCH_MARGIN)."""
    refuse_test_split(dataset.path)
    gold = [list(ex.labels) for ex in dataset.examples]
    if metric == "auto":
        metric = "accuracy" if is_single_label(gold) else "f1_samples"
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    top_k = top_k or pipeline.top_k
    widest = max((len(g) for g in gold), default=1)
    max_labels_grid = sorted({1, 2, 3, 5, min(widest, 10)} if widest > 1 else {1})
    select_by = "f1_samples" if metric == "candidate_recall" else metric

    taxonomy = taxonomy_of(pipeline.index.labels)
    hierarchical = taxonomy.max_depth() > 0
    branch_of = (lambda label_id: taxonomy.branch(label_id, 0)) if hierarchical else None
    scopes = (False, True) if hierarchical and per_branch else (False,)

    def scored(how: Aggregation, shortlists: list[list[Candidate]],
               branching: BranchConfig | None = None) -> Calibration:
        rule, value = best_threshold(Shortlists(shortlists, gold, branch_of), select_by,
                                     max_labels_grid, scopes)
        recall = candidate_recall(shortlists, gold)
        return Calibration(how, rule, metric, recall if metric == "candidate_recall" else value,
                           recall, branching)

    texts = [ex.text for ex in dataset.examples]
    retriever = pipeline.retriever
    if not isinstance(retriever, Retriever):
        raise TypeError(f"calibration searches and ranks itself: it needs a Retriever, "
                        f"not {type(retriever).__name__}")
    # Calibrate the stages that serve (sub-queries, lexical, ...); branch mode is searched here.
    stages = [s for s in retriever.stages if not isinstance(s, BranchStage)]
    if any(s.rescores for s in stages):  # sub-query scoring replaces aggregation: thresholds only
        search = retriever.search(texts, top_k)
        only = scored(retriever.aggregation, retriever.rank(search, stages=retriever.stages))
        return only, [only]
    widen = BranchConfig().widen
    # One search deep enough for branch mode; its first hits are exactly what flat ranks.
    search = retriever.search(texts, top_k, widen=widen)
    results = [scored(how, retriever.rank(search, how, stages)) for how in AGGREGATIONS]
    best = max(results, key=lambda c: (c.value, c.candidate_recall))
    depths = range(min(taxonomy.max_depth(), MAX_BRANCH_DEPTH))
    flat = best
    for depth in depths:
        for count in BRANCH_COUNTS:
            config = BranchConfig(depth, count, widen)
            cal = scored(flat.aggregation,
                         retriever.rank(search, flat.aggregation, [*stages, BranchStage(config)]),
                         config)
            results.append(cal)
            if beats_flat(cal, flat) and (best is flat or (cal.value, cal.candidate_recall)
                                          > (best.value, best.candidate_recall)):
                best = cal
    return best, results


def beats_flat(branch: Calibration, flat: Calibration) -> bool:
    """Branch mode wins by more than the margin, or ties at least and lifts candidate recall."""
    return branch.value > flat.value + BRANCH_MARGIN or (
        branch.value >= flat.value
        and branch.candidate_recall > flat.candidate_recall + BRANCH_MARGIN)


def calibration_record(best: Calibration, dataset: Dataset) -> dict:
    """What is saved beside the index."""
    return {"settings": best.settings(), "metric": best.metric, "value": round(best.value, 4),
            "candidate_recall": round(best.candidate_recall, 4),
            "dataset": {"name": dataset.name, "sha256": dataset.sha256,
                        "n": len(dataset.examples)},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "aggregation": asdict(best.aggregation),
            "branching": asdict(best.branching) if best.branching else None}
