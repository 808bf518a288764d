"""Calibration's work counted in reference seconds, so that a budget chooses the same settings on
any machine: what the work would take on the reference machine, from counts, not clocks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# What each unit of work took on the reference machine (2 cores, all-MiniLM-L6-v2 on ONNX
# Runtime, idle), fitted by `python -m bench.self_calibration work` on self-calibrations of the
# demo, CLINC150, NLU++ and ESCO catalogs. A budget in these seconds lasts about as long there
# and stops at the same setting everywhere; a faster machine finishes sooner, a slower one later.
COSTS: dict[str, float] = {
    # One text through the encoder, plus its characters (the encoder's cost grows with the
    # tokens; per text, in batches: 11 chars 0.9 ms, 28 chars 1.4 ms, 80 chars 7.8 ms, 182
    # chars 14 ms; in ESCO's self-calibration 20,000 names and aliases of 28 chars 1.4 ms).
    "encode_text": 0.1e-3,
    "encode_char": 0.065e-3,
    "query_vector": 0.5e-3,  # one vector searched in Chroma (ids and distances)
    "query_hit": 6e-6,  # each neighbour it returns
    "read_vector": 80e-6,  # one stored vector read back
    "rank_text": 0.15e-3,  # one text fused under one setting (its stages count their own)
    "score_text": 0.3e-3,  # one text's shortlist thresholded and scored
    "head_example_epoch": 35e-6,  # head training: examples x epochs
}

# A budget of work stops at the same point on any machine; on one this many times slower than
# the reference one, the wall clock stops it instead, at this many times the budget, and says so
# (self-calibration's search and the head's training).
WALL_FACTOR = 4.0


@dataclass
class WorkMeter:
    """Work done so far, in reference seconds (`spent`), and the wall time of each kind of it
    (to fit `COSTS` against); `wall` also lets a stage's own time be told from what it asked."""

    spent: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    wall_total: float = 0.0

    def charge(self, kind: str, reference_s: float, wall_s: float) -> None:
        """Count work of this kind: `reference_s` on the reference machine, `wall_s` here."""
        self.spent += reference_s
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + reference_s
        self.wall[kind] = self.wall.get(kind, 0.0) + wall_s
        self.wall_total += wall_s

    def encoded(self, texts: Sequence[str], wall_s: float) -> None:
        """Texts run through the encoder."""
        self.charge("encode", encode_cost(texts), wall_s)

    def queried(self, vectors: int, depth: int, wall_s: float) -> None:
        """Vectors searched in Chroma, `depth` neighbours each."""
        self.charge("query", vectors * (COSTS["query_vector"] + depth * COSTS["query_hit"]),
                    wall_s)

    def describe(self) -> dict[str, float]:
        """As saved in a calibration record: reference seconds in all and by kind (the kinds
        only timed, with no cost, such as a search's own Python, are left out)."""
        return {"work_s": round(self.spent, 1),
                **{f"work_{kind}_s": round(s, 1) for kind, s in sorted(self.by_kind.items())
                   if s > 0}}


def encode_cost(texts: Sequence[str]) -> float:
    """Reference seconds to encode these texts."""
    return embedding_cost(len(texts), sum(len(t) for t in texts))


def embedding_cost(texts: int, chars: int) -> float:
    """Reference seconds to encode `texts` texts of `chars` characters in all."""
    return texts * COSTS["encode_text"] + chars * COSTS["encode_char"]
