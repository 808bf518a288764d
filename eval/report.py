"""`labelrank report`: a PNG a person would rather look at than read (recall@K and metric bars)."""

from __future__ import annotations

from pathlib import Path

from eval.metrics import recall_curve
from retrieval.errors import require_extra

BAR_METRICS = ("candidate_recall", "R@5", "RP@5", "RP@10", "f1_micro", "f1_macro", "f1_samples",
               "jaccard", "exact_match", "accuracy", "in_scope_accuracy", "none_recall",
               "none_precision")


def plot_runs(runs: list[tuple[str, dict]], out: Path, max_k: int = 100) -> Path:
    """Recall@K curves (K = 1..max_k) and side-by-side metric bars for up to a few runs."""
    require_extra("matplotlib", "plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve_ax, bar_ax) = plt.subplots(1, 2, figsize=(14, 5.5))
    for name, run in runs:
        gold = [row["gold"] for row in run["predictions"]]
        ranked = [[c[0] for c in row.get("candidates", [])] for row in run["predictions"]]
        width = min(max_k, max((len(r) for r in ranked), default=1))
        curve_ax.plot(range(1, width + 1), recall_curve(gold, ranked, width)[:width], label=name)
    curve_ax.set(xlabel="K (candidates)", ylabel="candidate recall@K", ylim=(0, 1.01),
                 title="Does the gold label reach the shortlist?")
    curve_ax.grid(alpha=0.3)
    curve_ax.legend(fontsize=8)
    names = [m for m in BAR_METRICS if any(_metric(run, m) is not None for _, run in runs)]
    step = 0.8 / max(len(runs), 1)
    for i, (name, run) in enumerate(runs):
        values = [_metric(run, m) or 0.0 for m in names]
        bar_ax.bar([x + i * step for x in range(len(names))], values, width=step, label=name)
    bar_ax.set_xticks([x + step * (len(runs) - 1) / 2 for x in range(len(names))], names,
                      rotation=45, ha="right", fontsize=8)
    bar_ax.set(ylim=(0, 1.01), title="Metrics")
    bar_ax.grid(axis="y", alpha=0.3)
    bar_ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _metric(run: dict, name: str) -> float | None:
    metrics = run["metrics"]
    if name == "candidate_recall":
        return next((v for k, v in metrics.items() if k.startswith("candidate_recall@")), None)
    return metrics.get(name)
