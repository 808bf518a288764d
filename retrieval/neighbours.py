"""Neighbours as arrays: each query's nearest vectors as label numbers and similarities, fused
per label with numpy over the whole batch, with no object per hit.

The object path (`fusion.aggregate` over `Hit`s) stays for searches that need the hits' texts
(prompt evidence) or vectors (sub-queries); both give the same candidates and scores (a test
compares them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from retrieval.fusion import Aggregation, Candidate
from retrieval.index import label_of

# Up to this many rows, fusion runs in plain Python: numpy's ~30 calls cost more per call
# (0.2-0.3 ms) than a Python pass over a few rows' hits (~0.1 ms a row).
FEW_ROWS = 4


@dataclass(frozen=True)
class LabelTable:
    """Label ids numbered in sorted order, so that number order is id order (the tie-break)."""

    ids: tuple[str, ...]
    number: dict[str, int]

    @classmethod
    def of(cls, label_ids: Iterable[str]) -> LabelTable:
        """Number the given ids."""
        ids = tuple(sorted(label_ids))
        return cls(ids, {label_id: n for n, label_id in enumerate(ids)})

    def mask(self, allowed: Iterable[str]) -> np.ndarray:
        """A boolean per label number: True for the ids in `allowed`."""
        out = np.zeros(len(self.ids), dtype=bool)
        out[[self.number[i] for i in allowed if i in self.number]] = True
        return out


@dataclass(frozen=True)
class Neighbours:
    """A batch's neighbours, best first: label numbers (-1: not a known label), similarities
    and Chroma's vector ids, one row per query."""

    labels: np.ndarray  # (queries, depth) int64
    similarities: np.ndarray  # (queries, depth) float64, -inf where a row is short
    vector_ids: list[list[str]]
    table: LabelTable

    @classmethod
    def of(cls, ids: Sequence[Sequence[str]], distances: Sequence[Sequence[float]],
           table: LabelTable) -> Neighbours:
        """From Chroma's raw answer (`LabelIndex.nearest_ids`)."""
        width = max((len(row) for row in ids), default=0)
        labels = np.full((len(ids), width), -1, dtype=np.int64)
        similarities = np.full((len(ids), width), -np.inf)
        number = table.number
        for row, (vids, dists) in enumerate(zip(ids, distances, strict=True)):
            labels[row, :len(vids)] = [number.get(label_of(vid), -1) for vid in vids]
            similarities[row, :len(dists)] = 1.0 - np.asarray(dists, dtype=np.float64)
        return cls(labels, similarities, [list(v) for v in ids], table)

    def first(self, depth: int) -> Neighbours:
        """Only the `depth` nearest of each row."""
        return Neighbours(self.labels[:, :depth], self.similarities[:, :depth],
                          [v[:depth] for v in self.vector_ids], self.table)


def fuse(found: Neighbours, how: Aggregation, top_k: int,
         allowed: np.ndarray) -> list[list[Candidate]]:
    """Each row's best `top_k` labels among `allowed` (a mask over label numbers), scored as
    `fusion.aggregate` scores them, ties broken the same way (score, similarity, id)."""
    queries, depth = found.labels.shape
    if queries == 0 or depth == 0:
        return [[] for _ in range(queries)]
    keep = found.labels >= 0
    keep[keep] = allowed[found.labels[keep]]
    if queries <= FEW_ROWS:
        return _fuse_few(found, keep, how, top_k)
    r, column = np.nonzero(keep)  # row-major: each row's hits in rank order
    label, sim, rk = found.labels[r, column], found.similarities[r, column], column + 1
    # Hits grouped by (row, label), best rank first within a group: one integer key, which sorts
    # several times faster than lexsort's three.
    order = np.argsort((r * len(found.table.ids) + label) * (depth + 1) + rk)  # keys are unique
    r, label, rk, sim = r[order], label[order], rk[order], sim[order]
    new_group = np.empty(len(r), dtype=bool)
    new_group[:1] = True
    np.not_equal(r[1:], r[:-1], out=new_group[1:])
    new_group[1:] |= label[1:] != label[:-1]
    starts = np.flatnonzero(new_group)
    group = np.cumsum(new_group) - 1
    within = np.arange(len(r)) - starts[group]  # 0 for a label's best hit
    best_similarity = sim[starts]
    if how.method == "max":
        score = best_similarity.copy()
    else:
        counted = within < how.max_hits if how.max_hits else np.ones(len(r), dtype=bool)
        contribution = 1.0 / (how.k + rk)
        score = np.zeros(len(starts))
        # Added hit by hit in rank order, as a Python sum over the group would: same floats.
        for nth in range(int(within[counted].max(initial=-1)) + 1):
            picked = counted & (within == nth)
            score[group[picked]] += contribution[picked]
    g_row, g_label = r[starts], label[starts]
    return _best(found.table.ids, g_row, g_label, score, best_similarity, queries, top_k)


def _fuse_few(found: Neighbours, keep: np.ndarray, how: Aggregation,
              top_k: int) -> list[list[Candidate]]:
    """`fuse` for a few rows (`keep`: the hits on allowed labels), in plain Python: the same
    sums in the same order, the same ties."""
    ids, rrf = found.table.ids, how.method != "max"
    cap = (how.max_hits or found.labels.shape[1]) if rrf else 1
    out = []
    for labels, similarities in zip(np.where(keep, found.labels, -1).tolist(),
                                    found.similarities.tolist(), strict=True):
        groups: dict[int, list] = {}  # label number: [score, best similarity, hits counted]
        for rank, (label, similarity) in enumerate(zip(labels, similarities, strict=True), 1):
            if label < 0:
                continue
            if (group := groups.get(label)) is None:
                groups[label] = [1.0 / (how.k + rank) if rrf else similarity, similarity, 1]
            elif group[2] < cap:
                group[0] += 1.0 / (how.k + rank)
                group[2] += 1
        best = sorted(groups.items(), key=lambda g: (-g[1][0], -g[1][1], g[0]))[:top_k]
        out.append([Candidate(ids[label], score, similarity)
                    for label, (score, similarity, _) in best])
    return out


def _best(ids: tuple[str, ...], g_row: np.ndarray, g_label: np.ndarray, score: np.ndarray,
          similarity: np.ndarray, queries: int, top_k: int) -> list[list[Candidate]]:
    """Each row's `top_k` groups by score, then similarity, then id (groups come in row, then
    id order). Sorted row by row in a padded (rows, groups) layout: the same stable sort on the
    flat groups with the row as a third key cost three times as much."""
    row_start = np.searchsorted(g_row, np.arange(queries))
    position = np.arange(len(g_row)) - row_start[g_row]
    width = int(position.max(initial=-1)) + 1
    keys = np.full((2, queries, width), np.inf)  # padding sorts last
    keys[0, g_row, position] = -similarity
    keys[1, g_row, position] = -score
    slot = np.full((queries, width), -1)
    slot[g_row, position] = np.arange(len(g_row))
    picked = slot[np.arange(queries)[:, None], np.lexsort(keys, axis=-1)[:, :top_k]]
    counts = (picked >= 0).sum(axis=1).tolist()
    picked = picked[picked >= 0]
    found = iter(zip(g_label[picked].tolist(), score[picked].tolist(),
                     similarity[picked].tolist(), strict=True))
    return [[Candidate(ids[lab], s, b) for lab, s, b in islice(found, n)] for n in counts]
