"""The candidate-stage protocol: steps after the search that reshape each text's shortlist.

Stages are looked up by name in `service/registry.py`; a new one is one module plus one line
there. A stage's class owns its knobs in both directions (`StageKind`): the Settings fields it
reads, how it is built from them (`from_settings`; None: switched off), the values calibration
tries, and in which rounds. Calibration works on those Settings fields only, so what it saves
is what `from_settings` reads back, under the same names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, ClassVar, Protocol

import numpy as np

from retrieval.fusion import Aggregation, Candidate
from retrieval.index import Hit, LabelIndex, label_of
from retrieval.neighbours import Neighbours

Shortlists = list[list[Candidate]]


@dataclass(frozen=True)
class Search:
    """One batch's search: texts, their vectors, each text's neighbours (best first), and what
    the stages need to know about it."""

    texts: Sequence[str]
    vectors: np.ndarray
    found: list[list[Hit]] | Neighbours  # arrays when no stage needs texts or vectors
    allowed: frozenset[str]
    top_k: int
    depth_unit: int  # neighbours searched per unit of a stage's widening
    evidence: bool  # whether hits carry their texts (read for prompts only)

    @cached_property
    def hits(self) -> list[list[Hit]]:
        """Each text's neighbours as Hit objects (built on demand from arrays)."""
        if not isinstance(self.found, Neighbours):
            return self.found
        rows = zip(self.found.vector_ids, self.found.similarities.tolist(), strict=True)
        return [[Hit(label_of(vid), "", "", sims[n], n + 1, vector_id=vid)
                 for n, vid in enumerate(vids)]  # a short row's similarities are padded
                for vids, sims in rows]

    def first(self, depth: int) -> Search:
        """The same search, keeping only each text's `depth` nearest neighbours."""
        found = (self.found.first(depth) if isinstance(self.found, Neighbours)
                 else [h[:depth] for h in self.found])
        return replace(self, found=found)

    @property
    def depth(self) -> int:
        """How many neighbours the deepest row holds."""
        if isinstance(self.found, Neighbours):
            return self.found.labels.shape[1]
        return max((len(h) for h in self.found), default=0)


class CandidateStage(Protocol):
    """A step after aggregation: gets every text's pool, returns the new pools."""

    widen: int  # the pool it works on is `widen` times deeper than the shortlist
    needs_vectors: bool  # the search must return the hits' embeddings
    rescores: bool  # scores the raw hits itself, so aggregation is skipped
    # Reference seconds of its own work per text (not the encoding and searches it asks the
    # index for): what a calibration budget counts (`retrieval/calibration/work.py`).
    work_per_text: float

    def describe(self, method: str) -> str:
        """The retrieval method's name once this stage is added to `method`."""
        ...

    def apply(self, index: LabelIndex, search: Search, pools: Shortlists | None,
              pool_k: int) -> Shortlists:
        """New pools of at most `pool_k` candidates per text (None only for a rescoring stage)."""
        ...


def describe_method(aggregation: Aggregation, stages: Sequence[CandidateStage]) -> str:
    """The retrieval method in a few words, e.g. `rrf(k=1,m=3)+branch(d=0,b=2,w=4)`."""
    method = aggregation.describe()
    for stage in stages:
        method = stage.describe(method)
    return method


class StageKind(Protocol):
    """A kind of candidate stage, as the registry holds it: its class."""

    fields: ClassVar[tuple[str, ...]]  # the Settings fields it reads
    off: ClassVar[dict[str, object]]  # the values of `fields` that switch it off
    # Groups of fields calibration searches together, one group after the other (each round
    # starts from the best of the rounds before it).
    rounds: ClassVar[tuple[tuple[str, ...], ...]]
    # A win must exceed the setting without the stage by this much (dev-set noise).
    margin: ClassVar[float]
    sampled: ClassVar[bool]  # costly: judged on a sample of the dev texts
    # False: judged even past the search's time budget (cheap, and the default needs it).
    budgeted: ClassVar[bool]
    max_widen: ClassVar[int]  # the deepest pool any of its tried settings asks for

    @classmethod
    def from_settings(cls, settings: Any) -> CandidateStage | None:
        """The stage these settings configure (attributes named as `fields`), or None."""
        ...

    @classmethod
    def space(cls, index: LabelIndex) -> dict[str, tuple[object, ...]]:
        """The values calibration tries for each field on this index (empty: nothing to try)."""
        ...
