"""Sub-queries: the parts of a text that may each name a different label."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

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


def fuse_parts(
    whole: Sequence[Hit],
    parts: Sequence[Sequence[Hit]],
    weight: float,
    top_k: int,
    allowed: set[str],
) -> list[Candidate]:
    """Score labels by weight x best similarity to the whole text + the rest x best to any part.

    A label missing from a list gets that list's lowest similarity, a generous stand-in for
    a similarity we did not fetch.
    """
    best_whole: dict[str, float] = {}
    evidence: dict[str, list[str]] = {}
    for hit in whole:
        if hit.label_id in allowed:
            best_whole.setdefault(hit.label_id, hit.similarity)
            if hit.kind == "example":
                evidence.setdefault(hit.label_id, []).append(hit.text)
    best_part: dict[str, float] = {}
    for part in parts:
        for hit in part:
            if hit.label_id in allowed and hit.similarity > best_part.get(hit.label_id, -2.0):
                best_part[hit.label_id] = hit.similarity
    floor_whole = whole[-1].similarity if whole else 0.0
    floor_part = min((p[-1].similarity for p in parts if p), default=floor_whole)
    scored = []
    for label_id in best_whole.keys() | best_part.keys():
        score = weight * best_whole.get(label_id, floor_whole) + (1 - weight) * best_part.get(
            label_id, floor_part
        )
        scored.append(Candidate(label_id, score, score, tuple(evidence.get(label_id, ())[:2])))
    scored.sort(key=lambda c: (-c.score, c.label_id))
    return scored[:top_k]
