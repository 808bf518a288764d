"""Retrieval-only choice: which candidates pass a (calibrated) threshold."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from retrieval.fusion import Candidate


@dataclass(frozen=True)
class Threshold:
    """A label is chosen when its similarity and its share of the top score are both high enough;
    with `per_branch`, the top score of its own taxonomy branch, so that a label from an
    unrelated branch is not judged against another branch's winner."""

    min_similarity: float
    relative: float
    max_labels: int  # no defaults here: Settings holds them (threshold, relative_threshold, ...)
    per_branch: bool = False


def choose(candidates: Sequence[Candidate], rule: Threshold,
           branch_of: Callable[[str], str] | None = None) -> list[Candidate]:
    """Candidates that pass the rule, best first, at most `rule.max_labels`; may be empty."""
    if not candidates:
        return []
    tops = top_scores(candidates, branch_of if rule.per_branch else None)
    chosen = [c for c, top in zip(candidates, tops, strict=True)
              if c.similarity >= rule.min_similarity and c.score >= rule.relative * top]
    return chosen[: rule.max_labels]


def top_scores(candidates: Sequence[Candidate],
               branch_of: Callable[[str], str] | None = None) -> list[float]:
    """Per candidate (best first), the top score it is compared with: the list's, or its
    branch's when `branch_of` is given."""
    if branch_of is None:
        return [candidates[0].score] * len(candidates) if candidates else []
    best: dict[str, float] = {}
    for cand in candidates:
        best.setdefault(branch_of(cand.label_id), cand.score)
    return [best[branch_of(c.label_id)] for c in candidates]


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
