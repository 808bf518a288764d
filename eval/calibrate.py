"""`labelrank calibrate DATASET`: the calibration search on labeled dev data (never a test split).

The search itself lives in `retrieval/calibration/search.py`, shared with self-calibration.
"""

from __future__ import annotations

from eval.datasets import Dataset, refuse_test_split
from eval.metrics import is_single_label
from retrieval.calibration.scoring import Calibration, calibration_record
from retrieval.calibration.search import SearchSpace, search_settings
from service.factory import search_space
from service.pipeline import Pipeline
from service.settings import Settings, get_settings


def calibrate(pipeline: Pipeline, dataset: Dataset, metric: str = "auto",
              top_k: int | None = None, per_branch: bool = True,
              space: SearchSpace | None = None,
              min_texts_per_s: float = 0.0,
              settings: Settings | None = None) -> tuple[Calibration, list[Calibration]]:
    """Search every lever of `space` (by default every registered stage's, starting from
    `settings`, else the environment's) on a labeled dev set; return the best setting and
    every setting tried."""
    refuse_test_split(dataset.path)
    gold = [list(ex.labels) for ex in dataset.examples]
    if metric == "auto":
        metric = "accuracy" if is_single_label(gold) else "f1_samples"
    space = space or search_space(settings or get_settings(), per_branch=per_branch)
    return search_settings(pipeline.index, [ex.text for ex in dataset.examples], gold,
                           top_k or pipeline.top_k, metric, space, min_texts_per_s)


def labeled_record(best: Calibration, dataset: Dataset) -> dict:
    """What is saved beside the index after calibrating on labeled data."""
    return calibration_record(best, "labeled", {
        "name": dataset.name, "sha256": dataset.sha256, "n": len(dataset.examples)})


def format_calibrations(best: Calibration, results: list[Calibration]) -> str:
    """Every setting tried, one line each: dev score, candidate recall, texts/s, threshold."""
    lines = [f"{'retrieval':<62}{best.metric:>12}{'cand. recall':>14}{'texts/s':>9}{'n':>6}"
             "  threshold"]
    for cal in results:
        rule = cal.threshold
        lines.append(f"{cal.describe():<62}{cal.value:>12.4f}{cal.candidate_recall:>14.4f}"
                     f"{cal.texts_per_s:>9.0f}{cal.n:>6}"
                     f"  sim>={rule.min_similarity:.2f} rel>={rule.relative:.2f}"
                     f"{' (of branch top)' if rule.per_branch else ''} "
                     f"max={rule.max_labels}{' <-' if cal is best else ''}")
    return "\n".join(lines)
