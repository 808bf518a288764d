"""Request and response bodies of the HTTP API, and the errors only the API raises."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from retrieval.catalog import Label
from retrieval.errors import LabelrankError
from service.labels.bodies import (
    StrictModel,
    Text,
)
from service.pipeline import Mode
from service.results import ClassifyResult


class NotReadyError(LabelrankError):
    code = "not_ready"
    status = 503


class BatchTooLargeError(LabelrankError):
    code = "batch_too_large"
    status = 413


class UnauthorizedError(LabelrankError):
    code = "unauthorized"
    status = 401


class ForbiddenError(LabelrankError):
    code = "forbidden"
    status = 403


class ClassifyOptionsIn(StrictModel):
    """Options shared by single and batch classification."""

    mode: Mode = Field("auto", description="auto uses the LLM when one is configured")
    top_k: int | None = Field(None, ge=1, le=200, description="Candidates per text")
    max_labels: int | None = Field(None, ge=1, le=100, description="Most labels per text")
    subtree: str | None = Field(None, min_length=1, max_length=256,
                                description="Only labels at or below this label id")


class ClassifyRequest(ClassifyOptionsIn):
    """One text to classify."""

    text: Text = Field(description="The text; empty or too long is an error")


class BatchItem(StrictModel):
    """One text of a batch, with an optional id echoed back in its result."""

    id: str | None = Field(None, max_length=256)
    text: Text


class BatchRequest(ClassifyOptionsIn):
    """Several texts, classified with the same options."""

    items: list[BatchItem]


@dataclass(slots=True)
class BatchResultItem(ClassifyResult):
    """A classified batch item."""

    id: str | None = None


class BatchErrorItem(BaseModel):
    """A batch item that could not be classified; the other items are unaffected."""

    id: str | None = None
    error: dict[str, Any]


class BatchResponse(BaseModel):
    """One entry per input item, in input order."""

    results: list[BatchResultItem | BatchErrorItem]


class LabelOut(BaseModel):
    """A label as stored in the index."""

    id: str
    name: str
    description: str = ""
    aliases: list[str] = []
    parent: str | None = None
    assignable: bool = True
    path: list[str] = Field([], description="Ancestor ids, root first")

    @classmethod
    def of(cls, label: Label, path: Sequence[str] = ()) -> LabelOut:
        """From an index label and its ancestor ids."""
        return cls(id=label.id, name=label.name, description=label.description,
                   aliases=list(label.aliases), parent=label.parent, assignable=label.assignable,
                   path=list(path))


class LabelDetail(LabelOut):
    """A label with its example texts and the ids of its children."""

    examples: list[str] = []
    children: list[str] = []


class LabelQuery(StrictModel):
    """Filters and paging of the label list (unknown parameters are refused)."""

    parent: str | None = Field(None, description="Only children of this id; empty: top level")
    subtree: str | None = Field(None, min_length=1,
                                description="Only this label and every label below it")
    prefix: str | None = Field(None, description="Only ids that start with this")
    offset: int = Field(0, ge=0, le=10**9)
    limit: int = Field(100, ge=1, le=1000)


class LabelPage(BaseModel):
    """One page of labels, sorted by id."""

    items: list[LabelOut]
    total: int = Field(description="Labels matching the filter")
    offset: int
    limit: int
    next_offset: int | None = Field(None, description="Offset of the next page, if any")


class LabelWrite(BaseModel):
    """What a label write changed in the index."""

    label: LabelDetail
    created: bool = False
    vectors_added: int = 0
    vectors_removed: int = 0


class DeleteResult(BaseModel):
    """Labels removed (the label and, with cascade, its descendants)."""

    deleted: list[str]
    vectors_removed: int


class Health(BaseModel):
    """Liveness or readiness."""

    status: str
    checks: dict[str, Any] = {}


class ErrorInfo(BaseModel):
    """A stable `code`, a readable `message`, and details that depend on the code."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer has this shape."""

    error: ErrorInfo
