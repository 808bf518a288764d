"""Run files as the pages show them: one run's metrics, curve and labels; two runs side by side.

The console's Runs pages and `labelrank report --out X.html` render these same views.
"""

from __future__ import annotations

from dataclasses import dataclass

from eval.compare import differing_settings, flips, metric_deltas
from eval.metrics import per_label, recall_curve

HEADLINE = ("candidate_recall", "R@1", "R@5", "f1_micro", "f1_macro", "f1_samples", "jaccard",
            "exact_match", "accuracy", "in_scope_accuracy", "none_precision", "none_recall")
# Bigger is better for every metric a run stores except these counts.
COUNTS = frozenset({"n", "n_none", "n_pred_none", "n_multi_branch"})
MAX_LABEL_ROWS = 300
MAX_FLIPS = 500
CURVE_KS = (1, 3, 5, 10, 20, 50, 100)
LISTED = ("f1_samples", "accuracy")  # beside candidate recall, in the run list


@dataclass(frozen=True)
class Curve:
    """Candidate recall@K for K = 1..len(values) of one run."""

    name: str
    values: list[float]


def headline(run: dict) -> list[tuple[str, float]]:
    """The metrics worth a glance, in a fixed order (those the run has)."""
    metrics = run["metrics"]
    found = []
    for name in HEADLINE:
        if name == "candidate_recall":
            name = next((k for k in metrics if k.startswith("candidate_recall@")), "")
        if name in metrics:
            found.append((name, float(metrics[name])))
    return found


def summary(name: str, run: dict) -> dict:
    """One row of the run list."""
    dataset = run.get("dataset", {})
    return {"name": name, "created": run.get("created", ""), "label": run.get("label", ""),
            "dataset": dataset.get("name", "?"), "n": dataset.get("n"),
            "mode": run.get("mode", "?"), "prompt": _prompt(run),
            "headline": [(metric, value) for metric, value in headline(run)
                         if metric.startswith("candidate_recall@") or metric in LISTED]}


def curve(name: str, run: dict, max_k: int = 100) -> Curve:
    """Candidate recall@K from the run's stored shortlists."""
    rows = run["predictions"]
    gold = [row["gold"] for row in rows]
    ranked = [[c[0] for c in row.get("candidates", [])] for row in rows]
    width = min(max_k, max((len(r) for r in ranked), default=0))
    return Curve(name, recall_curve(gold, ranked, width) if width else [])


def label_rows(run: dict, limit: int = MAX_LABEL_ROWS) -> tuple[list[dict], int]:
    """Per-label precision, recall, F1 and support, worst first; and how many labels in all."""
    rows = run["predictions"]
    stats = per_label([row["gold"] for row in rows], [row.get("labels", []) for row in rows])
    ordered = sorted(stats.items(), key=lambda item: (item[1]["f1"], -item[1]["support"],
                                                      item[0]))
    return [{"id": label, **values} for label, values in ordered[:limit]], len(ordered)


def run_view(name: str, run: dict) -> dict:
    """Everything the page of one run shows."""
    labels, n_labels = label_rows(run)
    return {"name": name, "run": run, "headline": headline(run), "prompt": _prompt(run),
            "curve": curve(name, run), "labels": labels, "n_labels": n_labels,
            "metrics": [(k, v) for k, v in run["metrics"].items()]}


def compare_view(name_a: str, run_a: dict, name_b: str, run_b: dict) -> dict:
    """Metric deltas, settings that differ, and the flipped texts with both runs' candidates."""
    rows_a = {row["id"]: row for row in run_a["predictions"]}
    rows_b = {row["id"]: row for row in run_b["predictions"]}
    changed = []
    for flip in flips(run_a, run_b):
        kind = ("better" if flip.gained and not flip.lost else
                "worse" if flip.lost and not flip.gained else "mixed")
        changed.append({"flip": flip, "kind": kind,
                        "a": _candidates(rows_a[flip.id]), "b": _candidates(rows_b[flip.id])})
    counts = {kind: sum(c["kind"] == kind for c in changed) for kind in ("better", "worse",
                                                                          "mixed")}
    # Worse first: what a new version broke is what a reviewer looks for.
    changed.sort(key=lambda c: ("worse", "mixed", "better").index(c["kind"]))
    deltas = [(metric, a, b, delta, metric not in COUNTS)
              for metric, a, b, delta in metric_deltas(run_a, run_b)]
    return {"a": {"name": name_a, "run": run_a, "prompt": _prompt(run_a)},
            "b": {"name": name_b, "run": run_b, "prompt": _prompt(run_b)},
            "changed": [d for d in deltas if d[3] != 0],
            "unchanged": [d for d in deltas if d[3] == 0],
            "settings": differing_settings(run_a, run_b),
            "flips": changed[:MAX_FLIPS], "n_flips": len(changed), "counts": counts,
            "curves": [curve(name_a, run_a), curve(name_b, run_b)]}


def chart(curves: list[Curve], width: int = 640, height: int = 260) -> dict:
    """An SVG line chart of recall@K curves: polyline points, ticks and the K values shown."""
    left, right, top, bottom = 46, 14, 12, 34
    max_k = max((len(c.values) for c in curves), default=1) or 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(k: int) -> float:
        return left + (k - 1) / max(max_k - 1, 1) * plot_w

    def y(value: float) -> float:
        return top + (1 - value) * plot_h

    lines = [" ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in enumerate(c.values, start=1))
             for c in curves]
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100) if max_k / s <= 10)
    x_ticks = sorted({1, *range(step, max_k + 1, step)})
    ks = [k for k in CURVE_KS if k <= max_k] + ([max_k] if max_k not in CURVE_KS else [])
    return {"width": width, "height": height, "left": left, "right": width - right, "top": top,
            "bottom": height - bottom, "lines": lines,
            "x_ticks": [(k, x(k)) for k in x_ticks],
            "y_ticks": [(v, y(v)) for v in (0, 0.25, 0.5, 0.75, 1.0)],
            "table_ks": ks,
            "table": [(c.name, [c.values[k - 1] if k <= len(c.values) else None for k in ks])
                      for c in curves]}


def _candidates(row: dict) -> list[dict]:
    gold, chosen = set(row["gold"]), set(row.get("labels", []))
    return [{"id": c[0], "score": c[1], "similarity": c[2], "gold": c[0] in gold,
             "chosen": c[0] in chosen} for c in row.get("candidates", [])]


def _prompt(run: dict) -> str:
    prompt = run.get("prompt")
    return f"{prompt['task']}@{prompt['version']}" if prompt else "none (retrieval)"
