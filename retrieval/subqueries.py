"""Sub-queries: the parts of a text that may each name a different label, searched on their own."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

import numpy as np

from retrieval.fusion import Candidate
from retrieval.index import LabelIndex, label_of
from retrieval.neighbours import Neighbours
from retrieval.stages import CandidateStage, Search, Shortlists

_WORD = re.compile(r"[\w+#./-]+", re.UNICODE)
_SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n+")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "our",
        "that",
        "the",
        "their",
        "to",
        "was",
        "we",
        "were",
        "will",
        "with",
        "you",
        "your",
        "this",
        "these",
        "those",
        "who",
        "what",
        "which",
    ]
)


@dataclass(frozen=True)
class SubqueryConfig:
    """Short texts split into word n-grams up to `max_ngram`; longer ones into sentences
    (`max_ngram` 0: the text is not split, only given phrases are searched)."""

    max_ngram: int = 3
    max_words: int = 40
    weight: float = 0.5
    neighbours: int = 20


def split_subqueries(text: str, config: SubqueryConfig) -> list[str]:
    """The sub-queries of `text`: its parts worth querying on their own (never the whole)."""
    words = _WORD.findall(text)
    if len(words) <= config.max_words:
        parts = [
            " ".join(words[i : i + n])
            for n in range(1, config.max_ngram + 1)
            for i in range(len(words) - n + 1)
            if not all(w.lower() in _STOPWORDS for w in words[i : i + n])
        ]
    else:
        parts = []
        for sentence in _SENTENCE.split(text):
            sentence_words = _WORD.findall(sentence)
            parts += [
                " ".join(sentence_words[i : i + config.max_words])
                for i in range(0, len(sentence_words), config.max_words)
            ]
    whole = " ".join(words)
    return [p for p in dict.fromkeys(parts) if p and p != whole]


def fuse_subqueries(labels: np.ndarray, vectors: np.ndarray, query: np.ndarray,
                    subquery_vectors: np.ndarray, weight: float,
                    top_k: int) -> list[tuple[int, float]]:
    """Score each vector found by the text or any sub-query (`vectors`, of label numbers
    `labels`) exactly, as weight x similarity to the whole text + (1 - weight) x best
    similarity to a sub-query; a label takes its best vector. The best `top_k` (label number,
    score), best first (ties: the lower number)."""
    if not len(labels):
        return []
    to_whole = vectors @ query
    to_parts = (vectors @ subquery_vectors.T).max(axis=1) if len(subquery_vectors) else to_whole
    scores = weight * to_whole + (1 - weight) * to_parts
    order = np.lexsort((-scores, labels))  # by label, its best vector first
    first = order[np.r_[True, labels[order][1:] != labels[order][:-1]]]
    best_labels, best_scores = labels[first], scores[first]
    ranked = np.lexsort((best_labels, -best_scores))[:top_k]
    return list(zip(best_labels[ranked].tolist(), best_scores[ranked].tolist(), strict=True))


class _SubquerySettings(Protocol):
    subqueries: int
    subquery_max_words: int
    subquery_weight: float
    subquery_neighbours: int


@dataclass(frozen=True)
class SubqueryStage:
    """Scores every vector the text or one of its sub-queries found (replaces aggregation)."""

    config: SubqueryConfig
    widen: int = 1
    # Per text of one batch, more queries searched beside its own parts (phrases an LLM
    # inferred); set by `with_phrases` for that batch only.
    extra: tuple[tuple[str, ...], ...] = ()
    # The vectors are read once per batch by id (LabelIndex.embeddings), not with every hit.
    needs_vectors: bool = False
    rescores: bool = True
    work_per_text: ClassVar[float] = 2e-3
    fields: ClassVar[tuple[str, ...]] = ("subqueries", "subquery_max_words", "subquery_weight",
                                         "subquery_neighbours")
    off: ClassVar[dict[str, object]] = {"subqueries": 0}
    # n-grams x neighbours per part first (fewer neighbours first, so each depth is searched,
    # and timed, for real), then the weight, then the words per sentence part.
    rounds: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("subquery_neighbours", "subqueries"), ("subquery_weight",), ("subquery_max_words",))
    margin: ClassVar[float] = 0.0
    # Sub-queries cost 10-30 times a whole-text search: judged on a stable sample of dev texts.
    sampled: ClassVar[bool] = True
    budgeted: ClassVar[bool] = True
    max_widen: ClassVar[int] = 1

    @classmethod
    def space(cls, index: Any) -> dict[str, tuple[object, ...]]:
        """Values tried by calibration."""
        return {"subquery_neighbours": (20, 50), "subqueries": (2, 3),
                "subquery_weight": (0.5, 0.3, 0.7), "subquery_max_words": (40, 20)}

    @classmethod
    def from_settings(cls, settings: _SubquerySettings) -> SubqueryStage | None:
        """On when `subqueries` (the longest n-gram) is set."""
        if not settings.subqueries:
            return None
        return cls(SubqueryConfig(settings.subqueries, settings.subquery_max_words,
                                  settings.subquery_weight, settings.subquery_neighbours))

    def describe(self, method: str) -> str:
        """Sub-query scoring names the method on its own."""
        sub = self.config
        return (f"subqueries(n<={sub.max_ngram},w={sub.weight:g},"
                f"words<={sub.max_words},nn={sub.neighbours})")

    def apply(self, index: LabelIndex, search: Search, pools: Shortlists | None,
              pool_k: int) -> Shortlists:
        """Embed every text's sub-queries in one call and search them in one (ids only), read
        the distinct vectors found once, then score each text's vectors exactly."""
        extra = self.extra or [()] * len(search.texts)
        per_text = [[*(split_subqueries(text, self.config) if self.config.max_ngram else ()),
                     *more] for text, more in zip(search.texts, extra, strict=True)]
        # A part several texts share ("experience", "knowledge of") is embedded and searched
        # once: over a quarter of ESCO tech_valid's n-grams repeat within one batch.
        number = {part: n for n, part in enumerate(dict.fromkeys(
            query for queries in per_text for query in queries))}
        part_vectors = index.embedder.embed(list(number))
        part_ids = (index.nearest_ids(part_vectors, self.config.neighbours)[0] if number
                    else [])
        rows = [[number[query] for query in queries] for queries in per_text]
        found = [[vid for row in [whole, *(part_ids[r] for r in own)] for vid in row]
                 for whole, own in zip(_vector_ids(search), rows, strict=True)]
        distinct = [vid for vid in dict.fromkeys(v for ids in found for v in ids)
                    if label_of(vid) in search.allowed]
        stored = index.embeddings(distinct)  # a label edit may have deleted some meanwhile
        table = _Table(stored)
        evidence = _evidence(search)
        results = []
        for position, (ids, own) in enumerate(zip(found, rows, strict=True)):
            vectors = table.rows(ids)
            ranked = fuse_subqueries(table.labels[vectors], table.matrix[vectors],
                                     search.vectors[position], part_vectors[own],
                                     self.config.weight, pool_k)
            results.append([Candidate(table.ids[n], score, score,
                                      tuple(evidence[position].get(table.ids[n], ())[:2]))
                            for n, score in ranked])
        return results


def with_phrases(stages: Sequence[CandidateStage],
                 phrases: Sequence[Sequence[str]]) -> list[CandidateStage]:
    """The stages with each text's `phrases` searched as sub-queries beside it: added to the
    sub-query stage's own parts, or, with that stage off, searched alone by a sub-query stage
    of its default weight and depth, first (where the registry runs sub-queries)."""
    extra = tuple(tuple(p) for p in phrases)
    if any(isinstance(stage, SubqueryStage) for stage in stages):
        return [replace(stage, extra=extra) if isinstance(stage, SubqueryStage) else stage
                for stage in stages]
    return [SubqueryStage(SubqueryConfig(max_ngram=0), extra=extra), *stages]


class _Table:
    """A batch's distinct vectors as one matrix, each row with its label's number."""

    def __init__(self, stored: dict[str, np.ndarray]) -> None:
        self.row = {vid: n for n, vid in enumerate(stored)}
        self.ids = sorted({label_of(vid) for vid in stored})  # number order = id order
        number = {label_id: n for n, label_id in enumerate(self.ids)}
        self.labels = np.array([number[label_of(vid)] for vid in stored], dtype=np.int64)
        self.matrix = (np.stack(list(stored.values())) if stored
                       else np.zeros((0, 1), dtype=np.float32))

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """The distinct rows of these vector ids (ids without a row are left out)."""
        row = self.row
        return np.unique(np.fromiter((row[v] for v in ids if v in row), dtype=np.int64))


def _vector_ids(search: Search) -> list[list[str]]:
    """Each text's neighbours' vector ids, best first."""
    found = search.found
    if isinstance(found, Neighbours):
        return found.vector_ids
    return [[hit.vector_id for hit in hits] for hits in found]


def _evidence(search: Search) -> list[dict[str, list[str]]]:
    """Per text, the example texts among its neighbours, per label (only when read)."""
    if not search.evidence:
        return [{} for _ in search.texts]
    out: list[dict[str, list[str]]] = []
    for hits in search.hits:
        texts: dict[str, list[str]] = {}
        for hit in hits:
            if hit.kind == "example":
                texts.setdefault(hit.label_id, []).append(hit.text)
        out.append(texts)
    return out
