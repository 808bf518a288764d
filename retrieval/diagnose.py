"""Catalog diagnostics over an index: overlapping labels, bare labels, names that miss."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from retrieval.index import LabelIndex


@dataclass
class LabelVectors:
    """One label's stored texts and vectors, by kind."""

    texts: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)

    def of_kind(self, *kinds: str) -> list[int]:
        """Positions of the texts of these kinds."""
        return [i for i, kind in enumerate(self.kinds) if kind in kinds]

    def centroid(self) -> np.ndarray:
        """Unit-length mean of all the label's vectors."""
        mean = np.mean(self.vectors, axis=0)
        return mean / (np.linalg.norm(mean) or 1.0)


@dataclass(frozen=True)
class Collision:
    """A text of one label whose nearest neighbour is a text of another label."""

    label_id: str
    text: str
    other_id: str
    other_text: str
    similarity: float


@dataclass
class Overlap:
    """Two labels whose example clouds mix: the share of probed texts whose nearest
    neighbour is in the other label."""

    a: str
    b: str
    score: float
    centroid_similarity: float
    collisions: list[Collision]


@dataclass(frozen=True)
class NameMiss:
    """A label whose own name retrieves other labels' texts before its own."""

    label_id: str
    ahead: list[str]
    own_rank: int | None


@dataclass
class Diagnosis:
    """Everything `labelrank doctor catalog` reports."""

    labels: int
    vectors: int
    overlaps: list[Overlap]
    bare: list[str]
    name_misses: list[NameMiss]
    centroids: dict[str, np.ndarray]


def read_vectors(index: LabelIndex) -> dict[str, LabelVectors]:
    """Every stored vector, grouped by label."""
    by_label: dict[str, LabelVectors] = defaultdict(LabelVectors)
    for stored in index.iter_vectors():
        entry = by_label[stored.label_id]
        entry.texts.append(stored.text)
        entry.kinds.append(stored.kind)
        entry.vectors.append(stored.vector)
    return dict(by_label)


def diagnose(index: LabelIndex, top: int = 20, per_label: int = 20,
             neighbours: int = 10) -> Diagnosis:
    """Find overlapping label pairs, assignable labels with nothing but a name (group nodes
    are fine without), and names that miss."""
    stored = read_vectors(index)
    centroids = {lid: entry.centroid() for lid, entry in stored.items()}
    bare = sorted(lid for lid, label in index.labels.items()
                  if label.assignable and not label.description
                  and not stored.get(lid, LabelVectors()).of_kind("example"))
    return Diagnosis(
        labels=len(index.labels), vectors=index.vector_count(),
        overlaps=overlaps(index, stored, centroids, top, per_label, neighbours),
        bare=bare, name_misses=name_misses(index, stored, neighbours)[:top],
        centroids=centroids)


def overlaps(index: LabelIndex, stored: dict[str, LabelVectors],
             centroids: dict[str, np.ndarray], top: int, per_label: int,
             neighbours: int) -> list[Overlap]:
    """Label pairs ranked by how often one's texts have the other's as nearest neighbour."""
    probes: list[tuple[str, str]] = []
    vectors: list[np.ndarray] = []
    for lid, entry in stored.items():
        chosen = entry.of_kind("example") or list(range(len(entry.texts)))
        for i in chosen[:per_label]:
            probes.append((lid, entry.texts[i]))
            vectors.append(entry.vectors[i])
    probed = Counter(lid for lid, _ in probes)
    counts: Counter[tuple[str, str]] = Counter()
    found: dict[tuple[str, str], list[Collision]] = defaultdict(list)
    if not vectors:
        return []
    for (lid, text), hits in zip(probes, index.search(np.stack(vectors), neighbours + 1),
                                 strict=True):
        nearest = next((h for h in hits if not (h.label_id == lid and h.text == text)), None)
        if nearest is None or nearest.label_id == lid:
            continue
        key = tuple(sorted((lid, nearest.label_id)))
        counts[key] += 1
        found[key].append(Collision(lid, text, nearest.label_id, nearest.text,
                                    round(nearest.similarity, 4)))
    ranked = sorted(counts, key=lambda k: (-counts[k] / (probed[k[0]] + probed[k[1]]),
                                           -float(centroids[k[0]] @ centroids[k[1]])))
    return [Overlap(a, b, round(counts[(a, b)] / (probed[a] + probed[b]), 4),
                    round(float(centroids[a] @ centroids[b]), 4),
                    sorted(found[(a, b)], key=lambda c: -c.similarity))
            for a, b in ranked[:top]]


def name_misses(index: LabelIndex, stored: dict[str, LabelVectors],
                neighbours: int) -> list[NameMiss]:
    """Labels (with more than a name) whose name vector's nearest labels are others."""
    queries = [(lid, entry.vectors[entry.of_kind("name")[0]]) for lid, entry in stored.items()
               if entry.of_kind("name") and entry.of_kind("description", "example")]
    if not queries:
        return []
    misses = []
    hits_per = index.search(np.stack([v for _, v in queries]), neighbours + 1)
    for (lid, _), hits in zip(queries, hits_per, strict=True):
        order = list(dict.fromkeys(h.label_id for h in hits
                                   if not (h.label_id == lid and h.kind in ("name", "alias"))))
        if order and order[0] != lid:
            own = order.index(lid) + 1 if lid in order else None
            misses.append(NameMiss(lid, order[:own - 1] if own else order[:3], own))
    return sorted(misses, key=lambda m: (m.own_rank is not None, -(m.own_rank or 0)))
