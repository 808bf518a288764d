"""The result contract shared by the CLI, the API, batch files and eval runs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from prompts.selector import Usage

NoneReason = Literal["no_candidates", "below_threshold", "llm_rejected_all", "subtree_empty"]


class LabelScore(BaseModel):
    """A label with the retrieval score that ranked it."""

    id: str
    name: str
    score: float
    similarity: float | None = None
    path: list[str] | None = Field(None, description="Ancestor ids, root first; absent for a root")


class ClassifyResult(BaseModel):
    """Labels for one text, its candidates, and which path produced them."""

    labels: list[LabelScore]
    candidates: list[LabelScore]
    mode: Literal["llm", "retrieval"]
    degraded: bool = False
    reason: str | None = Field(None, description="Why the result is degraded, or why it is empty")
    none_reason: NoneReason | None = Field(
        None, description="Why no label was chosen, as a stable code (absent when labelled)")
    usage: Usage = Usage()
    dropped_ids: list[str] = Field(default_factory=list,
                                   description="Ids the LLM answered that were not candidates")
    llm_attempts: int = 0
    latency_ms: float = 0.0


class ItemError(BaseModel):
    """One item that could not be classified, and why."""

    error: dict[str, object]


Outcome = ClassifyResult | ItemError
