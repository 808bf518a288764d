"""Group neighbour vectors per label and score each label (reciprocal rank or max similarity)."""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Literal

from retrieval.index import Hit

Method = Literal["rrf", "max"]


@dataclass(frozen=True)
class Aggregation:
    """How hits become label scores: `rrf` sums 1/(k+rank) over a label's best `max_hits` hits."""

    method: Method = "rrf"
    k: float = 1.0
    max_hits: int | None = 3

    def describe(self) -> str:
        """Short human-readable name, e.g. `rrf(k=1,m=3)`."""
        if self.method == "max":
            return "max-similarity"
        return f"rrf(k={self.k:g},m={self.max_hits or 'all'})"


@dataclass(frozen=True)
class Candidate:
    """A label on the shortlist: its fused score, best similarity and nearest texts as evidence."""

    label_id: str
    score: float
    similarity: float
    evidence: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """As a JSON object (run files, caches, prepared batches)."""
        return {"label_id": self.label_id, "score": self.score, "similarity": self.similarity,
                "evidence": list(self.evidence)}

    @classmethod
    def from_json(cls, data: dict) -> Candidate:
        """The inverse of `to_json`."""
        return cls(data["label_id"], data["score"], data["similarity"],
                   tuple(data.get("evidence", ())))


def aggregate(hits: Sequence[Hit], how: Aggregation, top_k: int,
              allowed: Container[str] | None = None) -> list[Candidate]:
    """Fuse one query's hits into the best `top_k` labels (only `allowed` ones, when given)."""
    grouped: dict[str, list[Hit]] = {}
    for hit in hits:  # hits arrive best first, so each group is best first too
        if allowed is None or hit.label_id in allowed:
            grouped.setdefault(hit.label_id, []).append(hit)
    scored = []
    for label_id, group in grouped.items():
        best = group[: how.max_hits] if how.max_hits else group
        if how.method == "max":
            score = best[0].similarity
        else:
            score = sum(1.0 / (how.k + hit.rank) for hit in best)
        # Hits searched without texts have no kind, so they give no evidence.
        evidence = tuple(h.text for h in group if h.kind == "example")[:2]
        scored.append(Candidate(label_id, score, best[0].similarity, evidence))
    scored.sort(key=lambda c: (-c.score, -c.similarity, c.label_id))
    return scored[:top_k]
