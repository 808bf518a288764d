"""Stage outputs shared between calibration settings that differ only in later stages."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from retrieval.stages import CandidateStage, Search, Shortlists

# Settings are tried round by round, each round varying one stage kind from the best so far:
# the stages before it give the same pools for every variant of the round. A few entries hold
# them (400 texts x 120 candidates each); more would only hold settings never asked again.
KEPT = 6


class StageOutputs:
    """The last few stage outputs, by what produced them: the search, the aggregation and the
    settings of every stage up to this one. A repeat is answered from memory and charged to
    `memo` the seconds the first one took, so a setting still pays what serving it costs."""

    def __init__(self, memo: Any, kept: int = KEPT) -> None:
        self.memo, self.kept = memo, kept
        self._outputs: OrderedDict[Hashable, tuple[Shortlists, float]] = OrderedDict()
        self.reused = 0  # stage applications answered from memory

    def wrap(self, stages: Sequence[CandidateStage],
             keys: Sequence[Hashable]) -> list[CandidateStage]:
        """The stages, each answering from memory under its key (the key of all it depends on)."""
        return [_Remembered(stage, key, self) for stage, key in zip(stages, keys, strict=True)]

    def get(self, key: Hashable) -> Shortlists | None:
        """A remembered output, charged what it cost (None: not remembered)."""
        found = self._outputs.get(key)
        if found is None:
            return None
        self._outputs.move_to_end(key)
        self.memo.charged += found[1]
        self.reused += 1
        return found[0]

    def put(self, key: Hashable, pools: Shortlists, seconds: float) -> None:
        """Remember an output, forgetting the oldest beyond `kept`."""
        self._outputs[key] = (pools, seconds)
        while len(self._outputs) > self.kept:
            self._outputs.popitem(last=False)


class _Remembered:
    """A stage whose output for one key is computed once (stages return new lists, so a
    remembered output is never changed by the stages after it)."""

    def __init__(self, stage: CandidateStage, key: Hashable, outputs: StageOutputs) -> None:
        self.stage, self.key, self.outputs = stage, key, outputs
        self.widen, self.needs_vectors = stage.widen, stage.needs_vectors
        self.rescores, self.describe = stage.rescores, stage.describe
        self.work_per_text = stage.work_per_text

    def apply(self, index: Any, search: Search, pools: Shortlists | None,
              pool_k: int) -> Shortlists:
        """The remembered output, or the stage's, remembered."""
        found = self.outputs.get(self.key)
        if found is not None:
            return found
        meter = self.outputs.memo.meter
        started, asked = time.perf_counter(), meter.wall_total
        charged = self.outputs.memo.charged
        out = self.stage.apply(index, search, pools, pool_k)
        took = time.perf_counter() - started
        # The encoding and searches it asked the memo for are counted there.
        meter.charge(type(self.stage).__name__, len(search.texts) * self.work_per_text,
                     took - (meter.wall_total - asked))
        # What the memo handed out again inside the stage is already charged once.
        self.outputs.put(self.key, out, took + self.outputs.memo.charged - charged)
        return out
