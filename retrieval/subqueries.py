"""Sub-queries: the parts of a text that may each name a different label, searched on their own."""

from __future__ import annotations

import re
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from retrieval.fusion import Candidate
from retrieval.index import Hit, LabelIndex
from retrieval.stages import Search, Shortlists

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
    """Short texts split into word n-grams up to `max_ngram`; longer ones into sentences."""

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


def fuse_subqueries(whole: Sequence[Hit], subquery_hits: Sequence[Sequence[Hit]],
                    query: np.ndarray, subquery_vectors: np.ndarray, weight: float, top_k: int,
                    allowed: Set[str]) -> list[Candidate]:
    """Score each vector found by the text or any sub-query exactly, as weight x similarity to
    the whole text + (1 - weight) x best similarity to a sub-query; a label takes its best."""
    pool: dict[str, np.ndarray] = {}
    labels: dict[str, str] = {}
    for hit in [*whole, *(h for found in subquery_hits for h in found)]:
        if hit.label_id in allowed and hit.vector is not None:
            key = hit.vector_id or f"{hit.label_id}\x1f{hit.text}"
            if key not in pool:
                pool[key], labels[key] = hit.vector, hit.label_id
    if not pool:
        return []
    matrix = np.stack(list(pool.values()))
    to_whole = matrix @ query
    to_parts = (matrix @ subquery_vectors.T).max(axis=1) if len(subquery_vectors) else to_whole
    scores = weight * to_whole + (1 - weight) * to_parts
    best: dict[str, float] = {}
    evidence: dict[str, list[str]] = {}
    for label_id, score in zip(labels.values(), scores.tolist(), strict=True):
        if score > best.get(label_id, -2.0):
            best[label_id] = score
    for hit in whole:
        if hit.kind == "example" and hit.label_id in best:
            evidence.setdefault(hit.label_id, []).append(hit.text)
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    return [Candidate(label_id, score, score, tuple(evidence.get(label_id, ())[:2]))
            for label_id, score in ranked]


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
    needs_vectors: bool = True
    rescores: bool = True

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
        """Search every text's sub-queries in one batch, then fuse them with the whole text."""
        per_text = [split_subqueries(text, self.config) for text in search.texts]
        flat = [query for queries in per_text for query in queries]
        vectors = index.embedder.embed(flat)
        found = (index.search(vectors, self.config.neighbours, with_vectors=True,
                              with_texts=search.evidence) if flat else [])
        results, start = [], 0
        for position, (whole, queries) in enumerate(zip(search.hits, per_text, strict=True)):
            end = start + len(queries)
            results.append(fuse_subqueries(whole, found[start:end], search.vectors[position],
                                           vectors[start:end], self.config.weight, pool_k,
                                           search.allowed))
            start = end
        return results
