"""Sub-queries: the parts of a text that may each name a different label."""

from __future__ import annotations

import re
from collections.abc import Sequence, Set
from dataclasses import dataclass

import numpy as np

from retrieval.fusion import Candidate
from retrieval.index import Hit

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


def segments(text: str, config: SubqueryConfig) -> list[str]:
    """The parts of `text` worth querying on their own (never the whole text itself)."""
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


def fuse_parts(whole: Sequence[Hit], parts: Sequence[Sequence[Hit]], query: np.ndarray,
               part_queries: np.ndarray, weight: float, top_k: int,
               allowed: Set[str]) -> list[Candidate]:
    """Score each vector found by the text or any part exactly, as weight x similarity to the
    whole text + (1 - weight) x best similarity to a part; a label takes its best vector."""
    pool: dict[str, Hit] = {}
    for hit in [*whole, *(h for part in parts for h in part)]:
        if hit.label_id in allowed and hit.vector is not None:
            pool.setdefault(hit.vector_id or f"{hit.label_id}\x1f{hit.text}", hit)
    if not pool:
        return []
    hits = list(pool.values())
    matrix = np.stack([h.vector for h in hits])  # type: ignore[misc]
    to_whole = matrix @ query
    to_parts = (matrix @ part_queries.T).max(axis=1) if len(part_queries) else to_whole
    scores = weight * to_whole + (1 - weight) * to_parts
    best: dict[str, float] = {}
    evidence: dict[str, list[str]] = {}
    for hit, score in zip(hits, scores.tolist(), strict=True):
        if score > best.get(hit.label_id, -2.0):
            best[hit.label_id] = score
    for hit in whole:
        if hit.kind == "example" and hit.label_id in best:
            evidence.setdefault(hit.label_id, []).append(hit.text)
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    return [Candidate(label_id, score, score, tuple(evidence.get(label_id, ())[:2]))
            for label_id, score in ranked]
