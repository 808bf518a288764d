"""Retrieval-only choice: which candidates pass a (calibrated) threshold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.fusion import Candidate


@dataclass(frozen=True)
class Threshold:
    """A label is chosen when its similarity and its share of the top score are both high enough."""

    min_similarity: float = 0.4
    relative: float = 0.5
    max_labels: int = 3


def choose(candidates: Sequence[Candidate], rule: Threshold) -> list[Candidate]:
    """Candidates that pass the rule, best first, at most `rule.max_labels`; may be empty."""
    if not candidates:
        return []
    top = candidates[0].score
    chosen = [c for c in candidates
              if c.similarity >= rule.min_similarity and c.score >= rule.relative * top]
    return chosen[: rule.max_labels]


def why_none(candidates: Sequence[Candidate], rule: Threshold) -> tuple[str, str]:
    """Explain an empty retrieval-only answer: a stable code and a sentence."""
    if not candidates:
        return "no_candidates", "no candidates were retrieved"
    best = max(c.similarity for c in candidates)
    if best < rule.min_similarity:
        return "below_threshold", (f"best candidate similarity {best:.3f} is below the "
                                   f"threshold {rule.min_similarity:.3f}")
    return "below_threshold", (f"no candidate has both similarity >= {rule.min_similarity:.3f} "
                               f"and a score >= {rule.relative:.2f} x the top score")
