"""A 2-D map (PCA) of label centroids, with overlapping and confused pairs drawn in."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrieval.errors import require_extra


def confused_pairs(run: dict, top: int = 15) -> list[tuple[str, str, int]]:
    """The (gold, predicted) label pairs an eval run got wrong most often."""
    counts: Counter[tuple[str, str]] = Counter()
    for row in run["predictions"]:
        gold = set(row["gold"])
        for wrong in set(row.get("labels", [])) - gold:
            counts.update((g, wrong) for g in gold)
    return [(g, p, n) for (g, p), n in counts.most_common(top)]


def project(centroids: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Label centroids on their first two principal components."""
    ids = list(centroids)
    matrix = np.stack([centroids[i] for i in ids])
    matrix = matrix - matrix.mean(axis=0)
    _, _, components = np.linalg.svd(matrix, full_matrices=False)
    points = matrix @ components[:2].T
    return dict(zip(ids, points, strict=True))


def plot_map(centroids: dict[str, np.ndarray], names: dict[str, str], out: Path,
             overlapping: Sequence[tuple[str, str]] = (),
             confused: Sequence[tuple[str, str, int]] = ()) -> Path:
    """Write the PNG: every label a dot; overlapping pairs orange, confused pairs red."""
    require_extra("matplotlib", "plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = project(centroids)
    xy = np.stack(list(points.values()))
    fig, ax = plt.subplots(figsize=(12, 10))
    ax.scatter(xy[:, 0], xy[:, 1], s=6 if len(xy) > 2000 else 14, c="0.6", alpha=0.6,
               linewidths=0)
    marked: set[str] = set()
    for a, b in overlapping:
        _link(ax, points, a, b, "tab:orange", 1.5)
        marked |= {a, b}
    most = max((n for *_, n in confused), default=1)
    for gold, wrong, n in confused:
        _link(ax, points, gold, wrong, "tab:red", 1 + 3 * n / most)
        marked |= {gold, wrong}
    for lid in marked & set(points):
        ax.annotate(names.get(lid, lid)[:40], points[lid], fontsize=7, alpha=0.9,
                    xytext=(3, 3), textcoords="offset points")
    ax.set(title=f"Label centroids, PCA ({len(points)} labels): orange = overlapping examples, "
                 "red = confused in the eval run", xticks=[], yticks=[])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _link(ax, points: dict[str, np.ndarray], a: str, b: str, color: str, width: float) -> None:
    if a in points and b in points:
        ax.plot(*zip(points[a], points[b], strict=True), color=color, linewidth=width,
                alpha=0.8)
