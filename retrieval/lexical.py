"""Lexical channel: labels whose name or alias appears verbatim in the text."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Protocol

from retrieval.catalog import Label
from retrieval.fusion import Candidate
from retrieval.index import LabelIndex
from retrieval.stages import Search, Shortlists

_TOKEN = re.compile(r"[\w+#]+(?:[.\-/][\w+#]+)*", re.UNICODE)
MAX_PHRASE_WORDS = 6


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens; keeps `c++`, `c#`, `node.js`, `ci/cd` whole."""
    return [t.casefold() for t in _TOKEN.findall(text)]


class Lexicon:
    """Exact phrase -> label ids, over assignable labels' names and aliases."""

    def __init__(self, labels: Mapping[str, Label]) -> None:
        self.source = labels
        self.phrases: dict[tuple[str, ...], set[str]] = {}
        for label in labels.values():
            if not label.assignable:
                continue
            for phrase in (label.name, *label.aliases):
                words = tuple(tokens(phrase))
                if 0 < len(words) <= MAX_PHRASE_WORDS:
                    self.phrases.setdefault(words, set()).add(label.id)

    def matches(self, text: str) -> set[str]:
        """Ids of labels named verbatim in `text`."""
        words = tokens(text)
        found: set[str] = set()
        for n in range(1, MAX_PHRASE_WORDS + 1):
            for start in range(len(words) - n + 1):
                found |= self.phrases.get(tuple(words[start:start + n]), set())
        return found


def boost(candidates: Sequence[Candidate], matched: set[str], weight: float,
          top_k: int) -> list[Candidate]:
    """Raise matched labels by `weight` (similarity units), adding missing ones at the floor."""
    if not matched or weight <= 0:
        return list(candidates)
    floor = candidates[-1].similarity if candidates else 0.0
    present = {c.label_id for c in candidates}
    boosted = [replace(c, score=c.score + weight, similarity=c.similarity + weight)
               if c.label_id in matched else c for c in candidates]
    boosted += [Candidate(label_id, floor + weight, floor + weight)
                for label_id in sorted(matched - present)]
    boosted.sort(key=lambda c: (-c.score, c.label_id))
    return boosted[:top_k]


class _LexicalSettings(Protocol):
    lexical_weight: float


class LexicalStage:
    """Lifts labels named verbatim in the text by `weight` (adds them when missing)."""

    widen = 1
    needs_vectors = False
    rescores = False
    work_per_text: ClassVar[float] = 0.05e-3
    fields: ClassVar[tuple[str, ...]] = ("lexical_weight",)
    off: ClassVar[dict[str, object]] = {"lexical_weight": 0.0}
    rounds: ClassVar[tuple[tuple[str, ...], ...]] = (("lexical_weight",),)
    margin: ClassVar[float] = 0.0
    sampled: ClassVar[bool] = False
    budgeted: ClassVar[bool] = True
    max_widen: ClassVar[int] = 1

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self._lexicon: Lexicon | None = None

    @classmethod
    def from_settings(cls, settings: _LexicalSettings) -> LexicalStage | None:
        """On when `lexical_weight` is above zero."""
        return cls(settings.lexical_weight) if settings.lexical_weight else None

    @classmethod
    def space(cls, index: Any) -> dict[str, tuple[object, ...]]:
        """Weights tried by calibration."""
        return {"lexical_weight": (0.1, 0.2, 0.3)}

    def describe(self, method: str) -> str:
        """`method+lexical(w)`."""
        return f"{method}+lexical({self.weight:g})"

    def apply(self, index: LabelIndex, search: Search, pools: Shortlists | None,
              pool_k: int) -> Shortlists:
        """Boost each text's pool by the labels it names."""
        assert pools is not None, "the lexical stage needs aggregated pools"
        lexicon = self._current(index.labels)
        return [boost(pool, lexicon.matches(text) & search.allowed, self.weight, pool_k)
                for pool, text in zip(pools, search.texts, strict=True)]

    def _current(self, labels: Mapping[str, Label]) -> Lexicon:
        # The index swaps in a new labels dict on every change, so identity tells staleness.
        if self._lexicon is None or self._lexicon.source is not labels:
            self._lexicon = Lexicon(labels)
        return self._lexicon
