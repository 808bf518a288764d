"""The result contract shared by the CLI, the API, batch files and eval runs, and its one
serializer."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import Field, TypeAdapter

from prompts.selector import Usage

SCORE_DIGITS = 6  # scores and similarities on the wire
NO_USAGE = Usage()  # frozen, so one instance serves every result without an LLM call
NoneReason = Literal["no_candidates", "below_threshold", "llm_rejected_all", "subtree_empty"]

# Plain slotted dataclasses, not pydantic models: a retrieval-only batch builds ~30 scores per
# text, and models cost 0.23 ms per text even unvalidated (model_construct). Pydantic still
# serializes them (`_Wire`) and documents them (the API's response models), from the same fields.


class _Wire:
    """The pydantic-style methods the front ends call, all through one pydantic serializer."""

    __slots__ = ()

    def model_dump(self, *, mode: Literal["python", "json"] = "python",
                   exclude_none: bool = False) -> dict[str, Any]:
        """As Python (mode "json": JSON-ready), keys in field order."""
        return _adapter(type(self)).dump_python(self, mode=mode, exclude_none=exclude_none)

    def model_dump_json(self, *, exclude_none: bool = False) -> str:
        """As one compact JSON text."""
        return _adapter(type(self)).dump_json(self, exclude_none=exclude_none).decode()

    @classmethod
    def model_validate(cls, data: object) -> Self:
        """Read back from its JSON, validated."""
        return _adapter(cls).validate_python(data)


@cache
def _adapter(kind: type) -> TypeAdapter:
    return TypeAdapter(kind)


@dataclass(slots=True)
class LabelScore:
    """A label with the retrieval score that ranked it."""

    id: str
    name: str
    score: float
    similarity: float | None = None
    path: Annotated[list[str] | None, Field(
        description="Ancestor ids, root first; absent for a root")] = None


@dataclass(slots=True)
class ClassifyResult(_Wire):
    """Labels for one text, its candidates, and which path produced them."""

    labels: list[LabelScore]
    candidates: list[LabelScore]
    mode: Literal["llm", "retrieval"]
    degraded: bool = False
    reason: Annotated[str | None, Field(
        description="Why the result is degraded, or why it is empty")] = None
    none_reason: Annotated[NoneReason | None, Field(
        description="Why no label was chosen, as a stable code (absent when labelled)")] = None
    usage: Usage = NO_USAGE
    dropped_ids: Annotated[list[str], Field(
        description="Ids the LLM answered that were not candidates")] = field(
        default_factory=list)
    llm_attempts: int = 0
    latency_ms: float = 0.0


@dataclass(slots=True)
class ItemError(_Wire):
    """One item that could not be classified, and why."""

    error: dict[str, object]


Outcome = ClassifyResult | ItemError


def rounded(values: np.ndarray, digits: int = SCORE_DIGITS) -> list[float]:
    """`round(v, digits)` of each value, the very floats Python's round gives, in numpy."""
    # 60 round() calls per text were the largest cost of a result. rint(v * 10^d) / 10^d is
    # Python's correctly rounded answer unless the product fell within its rounding error of a
    # half (or is huge, or not finite): those few values go through round() itself.
    scale = 10.0 ** digits
    scaled = values * scale
    with np.errstate(invalid="ignore"):  # inf - inf: such values are in doubt anyway
        doubt = ~(np.abs(scaled) < 2.0 ** 52) | (np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6)
    out = (np.rint(scaled) / scale).tolist()
    for i in np.flatnonzero(doubt).tolist():
        out[i] = round(float(values[i]), digits)
    return out
