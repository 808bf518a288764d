"""The candidate-stage protocol: steps after the search that reshape each text's shortlist.

Stages are looked up by name in `service/registry.py`; a new one is one module plus one line
there. Each module builds its stage from settings with `from_settings` (None: switched off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from retrieval.fusion import Candidate
from retrieval.index import Hit, LabelIndex

Shortlists = list[list[Candidate]]


@dataclass(frozen=True)
class Search:
    """One batch's search: texts, their vectors, each text's neighbours (best first), and what
    the stages need to know about it."""

    texts: Sequence[str]
    vectors: np.ndarray
    hits: list[list[Hit]]
    allowed: frozenset[str]
    top_k: int
    depth_unit: int  # neighbours searched per unit of a stage's widening
    evidence: bool  # whether hits carry their texts (read for prompts only)


class CandidateStage(Protocol):
    """A step after aggregation: gets every text's pool, returns the new pools."""

    widen: int  # the pool it works on is `widen` times deeper than the shortlist
    needs_vectors: bool  # the search must return the hits' embeddings
    rescores: bool  # scores the raw hits itself, so aggregation is skipped

    def describe(self, method: str) -> str:
        """The retrieval method's name once this stage is added to `method`."""
        ...

    def apply(self, index: LabelIndex, search: Search, pools: Shortlists | None,
              pool_k: int) -> Shortlists:
        """New pools of at most `pool_k` candidates per text (None only for a rescoring stage)."""
        ...
