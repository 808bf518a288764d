"""What calibration chooses and how a choice is scored: settings, threshold rules, records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from retrieval.branches import BranchConfig, BranchStage
from retrieval.decision import Threshold, top_scores
from retrieval.fusion import Aggregation, Candidate
from retrieval.lexical import LexicalStage
from retrieval.stages import CandidateStage
from retrieval.subqueries import SubqueryConfig, SubqueryStage

SIMILARITIES = [round(float(x), 3) for x in np.arange(0.10, 0.901, 0.02)]
RELATIVES = (0.0, 0.25, 0.5, 0.75, 0.9)
METRICS = ("f1_samples", "jaccard", "accuracy", "f1_micro", "candidate_recall")
# Branch mode must beat flat by more than dev-set noise (or match it and lift candidate recall,
# the ceiling of LLM mode, by as much): a 0.2-point dev win on CLINC150 was a loss on held-out.
BRANCH_MARGIN = 0.005
SOURCES = ("shape", "self", "labeled")  # where a saved setting came from, weakest first


@dataclass(frozen=True)
class Calibration:
    """One retrieval setting with its best threshold rule, its dev-set score and its cost."""

    aggregation: Aggregation
    threshold: Threshold
    metric: str
    value: float
    candidate_recall: float
    branching: BranchConfig | None = None
    neighbours: int = 100
    subqueries: SubqueryConfig | None = None
    lexical_weight: float = 0.0
    texts_per_s: float = 0.0
    n: int = 0  # dev texts it was scored on

    def stages(self) -> list[CandidateStage]:
        """The candidate stages this setting switches on, in the registry's order."""
        stages: list[CandidateStage] = []
        if self.subqueries:
            stages.append(SubqueryStage(self.subqueries))
        if self.lexical_weight:
            stages.append(LexicalStage(self.lexical_weight))
        if self.branching:
            stages.append(BranchStage(self.branching))
        return stages

    def describe(self) -> str:
        """The retrieval variant, e.g. `rrf(k=1,m=3)+branch(d=0,b=2,w=4)`, and its depth."""
        method = self.aggregation.describe()
        for stage in self.stages():
            method = stage.describe(method)
        return f"{method} nn={self.neighbours}"

    def settings(self) -> dict[str, object]:
        """As Settings fields, the form saved beside the index."""
        agg = self.aggregation
        branch = self.branching or BranchConfig()
        sub = self.subqueries or SubqueryConfig()
        return {"aggregation": agg.method, "rrf_k": agg.k, "max_hits_per_label": agg.max_hits or 0,
                "threshold": self.threshold.min_similarity,
                "relative_threshold": self.threshold.relative,
                "max_labels": self.threshold.max_labels,
                "relative_per_branch": self.threshold.per_branch,
                "retrieval_mode": "branch" if self.branching else "flat",
                "branch_depth": branch.depth, "branches": branch.branches,
                "neighbours": self.neighbours,
                "subqueries": self.subqueries.max_ngram if self.subqueries else 0,
                "subquery_weight": sub.weight, "subquery_max_words": sub.max_words,
                "subquery_neighbours": sub.neighbours, "lexical_weight": self.lexical_weight}


def calibration_record(best: Calibration, source: str, dev_set: dict) -> dict:
    """What is saved beside the index: the settings, which dev set each came from, the score."""
    settings = best.settings()
    return {"settings": settings, "sources": dict.fromkeys(settings, source), "source": source,
            "metric": best.metric, "value": round(best.value, 4),
            "candidate_recall": round(best.candidate_recall, 4),
            "texts_per_s": round(best.texts_per_s, 1), "retrieval": best.describe(),
            "dev_set": dev_set, "created": datetime.now(UTC).isoformat(timespec="seconds")}


class ShortlistMatrix:
    """Shortlists as matrices (texts x rank), so every threshold rule is scored at numpy speed."""

    def __init__(self, shortlists: Sequence[Sequence[Candidate]],
                 gold: Sequence[Sequence[str]],
                 branch_of: Callable[[str], str] | None = None,
                 none_share: float | None = None) -> None:
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
        self.weight = (None if none_share is None
                       else text_weights(self.n_gold == 0, none_share))

    def score(self, rule: Threshold, metric: str) -> float:
        """The metric of the rule's predictions, with the conventions of eval.metrics."""
        return float(self.scores(np.array([rule.min_similarity]), rule.relative,
                                 rule.max_labels, rule.per_branch, metric)[0])

    def scores(self, similarities: np.ndarray, relative: float, max_labels: int,
               per_branch: bool, metric: str) -> np.ndarray:
        """`score` for the rules that differ only in their minimum similarity, all at once."""
        shares = self.relative_in_branch if per_branch else self.relative
        passing = ((self.similarity[None] >= similarities[:, None, None])
                   & (shares >= relative)[None])
        chosen = passing & (np.cumsum(passing, axis=2) <= max_labels)
        tp = (chosen & self.correct[None]).sum(axis=2)
        n_pred = chosen.sum(axis=2)
        both_empty = (n_pred == 0) & (self.n_gold == 0)[None]
        if metric == "accuracy":
            first = np.argmax(chosen, axis=2)[..., None]
            first_ok = (np.take_along_axis(np.broadcast_to(self.correct, chosen.shape), first,
                                           axis=2)[..., 0] & (self.n_gold == 1)[None])
            return self._average(both_empty | ((n_pred >= 1) & first_ok))
        if metric == "f1_micro":
            tps = self._total(tp)
            fp, fn = self._total(n_pred - tp), self._total(self.n_gold[None] - tp)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(tps > 0, 2 * tps / (2 * tps + fp + fn), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            if metric == "jaccard":
                per_text = tp / (n_pred + self.n_gold[None] - tp)
            else:  # f1_samples
                per_text = 2 * tp / (n_pred + self.n_gold[None])
        return self._average(np.where(both_empty, 1.0, np.nan_to_num(per_text)))

    def _average(self, per_text: np.ndarray) -> np.ndarray:
        """Per rule, the mean over texts (weighted when a none share is set)."""
        return per_text.mean(axis=1) if self.weight is None else per_text @ self.weight

    def _total(self, per_text: np.ndarray) -> np.ndarray:
        """Per rule, the sum over texts (weighted when a none share is set)."""
        return per_text.sum(axis=1) if self.weight is None else per_text @ self.weight


def text_weights(out_of_scope: np.ndarray, none_share: float) -> np.ndarray:
    """Each dev text's weight in a metric (summing to 1): equal, or reweighted so that the
    out-of-scope texts count for `none_share` of the total, the share the user expects in
    traffic (a dev split rarely has it: CLINC150 valid 3%, its test 18%)."""
    n = len(out_of_scope)
    n_none = int(out_of_scope.sum())
    if n_none in (0, n):
        return np.full(n, 1.0 / n) if n else np.zeros(0)
    return np.where(out_of_scope, none_share / n_none, (1.0 - none_share) / (n - n_none))


def best_threshold(shortlists: ShortlistMatrix, metric: str, max_labels_grid: Sequence[int],
                   per_branch: Sequence[bool] = (False,)) -> tuple[Threshold, float]:
    """The threshold rule that scores best on these shortlists (ties: the first found)."""
    best, best_value = Threshold(), -1.0
    grid = np.array(SIMILARITIES)
    for max_labels in max_labels_grid:
        scopes = per_branch if max_labels > 1 else (False,)
        for scope, relative in ((s, r) for s in scopes
                                for r in (RELATIVES if max_labels > 1 else (0.0,))):
            values = shortlists.scores(grid, relative, max_labels, scope, metric)
            first = int(np.argmax(values >= values.max() - 1e-12))
            if values[first] > best_value + 1e-12:
                best = Threshold(SIMILARITIES[first], relative, max_labels, scope)
                best_value = float(values[first])
    return best, best_value


def candidate_recall(shortlists: Sequence[Sequence[Candidate]],
                     gold: Sequence[Sequence[str]]) -> float:
    """Mean share of gold labels on the shortlist, over texts with gold labels."""
    shares = [len(set(g) & {c.label_id for c in s}) / len(set(g))
              for s, g in zip(shortlists, gold, strict=True) if g]
    return float(np.mean(shares)) if shares else 0.0


def beats_flat(branch: Calibration, flat: Calibration) -> bool:
    """Branch mode wins by more than the margin, or ties at least and lifts candidate recall."""
    return branch.value > flat.value + BRANCH_MARGIN or (
        branch.value >= flat.value
        and branch.candidate_recall > flat.candidate_recall + BRANCH_MARGIN)
