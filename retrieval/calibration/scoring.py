"""What calibration chooses and how a choice is scored: settings, threshold rules, records."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from retrieval.decision import Threshold, top_scores
from retrieval.fusion import Aggregation, Candidate
from retrieval.stages import CandidateStage, describe_method

SIMILARITIES = [round(float(x), 3) for x in np.arange(0.10, 0.901, 0.02)]
RELATIVES = (0.0, 0.25, 0.5, 0.75, 0.9)
METRICS = ("f1_samples", "jaccard", "accuracy", "f1_micro", "candidate_recall")
SOURCES = ("shape", "self", "labeled")  # where a saved setting came from, weakest first


# The calibrated Settings fields that are not a stage's, with the attribute each is on the
# retrieval objects: the one table between the two names.
BASE_FIELDS = {"aggregation": "aggregation.method", "rrf_k": "aggregation.k",
               "max_hits_per_label": "aggregation.max_hits",
               "threshold": "threshold.min_similarity",
               "relative_threshold": "threshold.relative", "max_labels": "threshold.max_labels",
               "relative_per_branch": "threshold.per_branch", "neighbours": "neighbours"}


@dataclass(frozen=True)
class Calibration:
    """One retrieval setting with its best threshold rule, its dev-set score and its cost. The
    stages are kept both as built and as the Settings fields they were built from."""

    aggregation: Aggregation
    threshold: Threshold
    metric: str
    value: float
    candidate_recall: float
    neighbours: int = 100
    stages: tuple[CandidateStage, ...] = ()
    stage_settings: Mapping[str, object] = field(default_factory=dict)
    texts_per_s: float = 0.0
    n: int = 0  # dev texts it was scored on

    def stage(self, kind: type) -> CandidateStage | None:
        """The stage of this class in the setting, if it is on."""
        return next((s for s in self.stages if isinstance(s, kind)), None)

    def describe(self) -> str:
        """The retrieval variant, e.g. `rrf(k=1,m=3)+branch(d=0,b=2,w=4)`, and its depth."""
        return f"{describe_method(self.aggregation, self.stages)} nn={self.neighbours}"

    def settings(self) -> dict[str, object]:
        """As Settings fields, the form saved beside the index."""
        base = {name: _attribute(self, path) for name, path in BASE_FIELDS.items()}
        base["max_hits_per_label"] = base["max_hits_per_label"] or 0
        return {**base, **self.stage_settings}


def _attribute(obj: object, path: str) -> object:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


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
    best, best_value = Threshold(SIMILARITIES[0], 0.0, 1), -1.0
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


def beats(setting: Calibration, base: Calibration, margin: float = 0.0) -> bool:
    """`setting` wins over `base` by more than `margin`, or ties at least and lifts candidate
    recall by as much (with no margin: a better (value, candidate recall) pair)."""
    return setting.value > base.value + margin or (
        setting.value >= base.value
        and setting.candidate_recall > base.candidate_recall + margin)
