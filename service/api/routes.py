"""The API's routes: a few lines each over the engine the lifespan built (see app.py)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from retrieval.taxonomy import taxonomy_of
from service.api.auth import require_read, require_write
from service.api.errors import error_of
from service.api.models import (
    BatchRequest,
    BatchResponse,
    BatchTooLargeError,
    ClassifyOptionsIn,
    ClassifyRequest,
    DeleteResult,
    ErrorBody,
    Health,
    LabelDetail,
    LabelOut,
    LabelPage,
    LabelQuery,
    LabelWrite,
)
from service.api.state import ServiceState
from service.labels.bodies import LABEL_ID_PATTERN, FeedbackIn, FeedbackOut, LabelIn, LabelPatch
from service.labels.editor import LiveLabels, Written, page
from service.pipeline import ClassifyOptions, Pipeline
from service.results import ClassifyResult, ItemError, Outcome

log = logging.getLogger("labelrank.api")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in {
        400: "Option not available (LLM mode without an LLM)",
        401: "Missing or wrong API key", 403: "Key may read but not write",
        404: "Unknown label id", 409: "Conflict (label has children, empty index)",
        413: "Body or text too large", 422: "Invalid request or text",
        503: "Not ready (loading, or loading failed)"}.items()}


def get_state(request: Request) -> ServiceState:
    """The service state created in the lifespan."""
    return request.app.state.labelrank


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_pipeline(state: StateDep) -> Pipeline:
    """The loaded pipeline (503 until it is), up to date with other workers' label edits."""
    state.require_pipeline()
    if state.refresh_due():
        await anyio.to_thread.run_sync(state.refresh_if_changed)
    return state.require_pipeline()


async def get_labels(state: StateDep) -> LiveLabels:
    """The live label editor (503 until loaded), synced with other workers in server mode."""
    state.require_labels()
    if state.server_mode:  # writes check parents and children: never on stale records
        await anyio.to_thread.run_sync(state.refresh_if_changed)
    return state.require_labels()


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
LabelsDep = Annotated[LiveLabels, Depends(get_labels)]
LabelIdPath = Annotated[str, Path(min_length=1, max_length=256, pattern=LABEL_ID_PATTERN)]

read = APIRouter(dependencies=[Depends(require_read)], responses=ERRORS)
write = APIRouter(dependencies=[Depends(require_write)], responses=ERRORS)
health = APIRouter(tags=["health"])


def _options(body: ClassifyOptionsIn) -> ClassifyOptions:
    return ClassifyOptions(mode=body.mode, top_k=body.top_k, max_labels=body.max_labels,
                           subtree=body.subtree)


def _raise_item(outcome: Outcome) -> ClassifyResult:
    if isinstance(outcome, ItemError):
        raise error_of(outcome)
    return outcome


# Results leave as JSON dumped by their own serializer: FastAPI would copy each into a dict and
# validate it again against the response model, which stays for the documentation.
@read.post("/v1/classify", response_model=ClassifyResult, tags=["classify"])
async def classify(body: ClassifyRequest, state: StateDep, pipeline: PipelineDep) -> Any:
    """Classify one text; concurrent requests are micro-batched into one pipeline call."""
    result = _raise_item(await state.classify_one(pipeline, body.text, _options(body)))
    return JSONResponse(result.model_dump(mode="json"))


@read.post("/v1/classify/batch", response_model=BatchResponse, tags=["classify"])
async def classify_batch(body: BatchRequest, state: StateDep, pipeline: PipelineDep) -> Any:
    """Classify several texts in input order; a bad item gets an error entry, the rest a result."""
    if len(body.items) > state.settings.max_batch_items:
        raise BatchTooLargeError(f"{len(body.items)} items; the limit is "
                                 f"{state.settings.max_batch_items}",
                                 limit=state.settings.max_batch_items)
    outcomes = await anyio.to_thread.run_sync(
        state.run_batch, pipeline, [item.text for item in body.items], _options(body), "batch")
    results = [{"id": item.id, **out.model_dump(mode="json")} if isinstance(out, ItemError)
               else {**out.model_dump(mode="json"), "id": item.id}
               for item, out in zip(body.items, outcomes, strict=True)]
    return JSONResponse({"results": results})


@read.get("/v1/labels", response_model=LabelPage, tags=["labels"])
async def list_labels(pipeline: PipelineDep, query: Annotated[LabelQuery, Query()]) -> Any:
    """List labels sorted by id, one page at a time, optionally filtered (by parent, subtree
    or id prefix; an unknown subtree is a 404 `unknown_subtree`)."""
    items, total = await anyio.to_thread.run_sync(page, pipeline.index, query.parent,
                                                  query.prefix, query.offset, query.limit,
                                                  query.subtree)
    more = query.offset + len(items) < total
    taxonomy = taxonomy_of(pipeline.index.labels)
    return LabelPage(items=[LabelOut.of(lab, taxonomy.path(lab.id)) for lab in items],
                     total=total,
                     offset=query.offset, limit=query.limit,
                     next_offset=query.offset + len(items) if more else None)


@read.get("/v1/labels/{label_id:path}", response_model=LabelDetail, tags=["labels"])
async def get_label(label_id: LabelIdPath, labels: LabelsDep) -> Any:
    """One label with its examples and the ids of its children."""
    return await anyio.to_thread.run_sync(_detail, labels, label_id)


@write.put("/v1/labels/{label_id:path}", response_model=LabelWrite, tags=["labels"])
async def put_label(label_id: LabelIdPath, body: LabelIn, labels: LabelsDep,
                    state: StateDep) -> Any:
    """Create or replace a label, examples included; the next classify request sees it.
    The body may be a catalog line or a GET answer (`id` must match; `path`, `children`
    are ignored)."""
    body.check_id(label_id)
    done = await anyio.to_thread.run_sync(labels.put, label_id, body)
    state.metrics.label_writes.labels("create" if done.created else "replace").inc()
    return await anyio.to_thread.run_sync(_written, labels, done)


@write.patch("/v1/labels/{label_id:path}", response_model=LabelWrite, tags=["labels"])
async def patch_label(label_id: LabelIdPath, body: LabelPatch, labels: LabelsDep,
                      state: StateDep) -> Any:
    """Change name, description, parent or assignable; add or remove examples and aliases."""
    done = await anyio.to_thread.run_sync(labels.patch, label_id, body)
    state.metrics.label_writes.labels("patch").inc()
    return await anyio.to_thread.run_sync(_written, labels, done)


@write.delete("/v1/labels/{label_id:path}", response_model=DeleteResult, tags=["labels"])
async def delete_label(
    label_id: LabelIdPath, labels: LabelsDep, state: StateDep,
    cascade: Annotated[bool, Query(description="Also delete every label below it")] = False,
) -> Any:
    """Delete a label; a parent of other labels is refused (409) unless `cascade=true`."""
    deleted, vectors = await anyio.to_thread.run_sync(labels.delete, label_id, cascade)
    state.metrics.label_writes.labels("delete").inc(len(deleted))
    return DeleteResult(deleted=deleted, vectors_removed=vectors)


@write.post("/v1/feedback", response_model=FeedbackOut, tags=["labels"])
async def feedback(body: FeedbackIn, labels: LabelsDep, state: StateDep) -> Any:
    """Learn from a reviewed text: confirmed labels get it as an example; all is logged."""
    out = await anyio.to_thread.run_sync(labels.feedback, body)
    state.metrics.feedback.labels("confirmed").inc(len(out.confirmed))
    state.metrics.feedback.labels("rejected").inc(len(out.rejected))
    return out


@read.get("/metrics", response_class=Response, tags=["health"],
          responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics: requests and latency per route, results, LLM calls and tokens."""
    await anyio.to_thread.run_sync(state.readiness)  # refreshes the label and ready gauges
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@health.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (no auth)."""
    return Health(status="ok")


@health.get("/readyz", response_model=Health,
            responses={503: {"model": ErrorBody, "description": "Not ready, with checks"}})
async def readyz(state: StateDep) -> Any:
    """Ready when the embedder is loaded, the index reachable and it holds labels (no auth)."""
    checks = await anyio.to_thread.run_sync(state.readiness)
    if checks["ready"]:
        return Health(status="ready", checks=checks)
    message = str(checks.get("error") or ("the index has no labels" if checks["index"]
                                          else "the embedder and the index are loading"))
    return JSONResponse({"error": {"code": "not_ready", "message": message, "checks": checks}},
                        status_code=503)


def _detail(labels: LiveLabels, label_id: str) -> LabelDetail:
    label = labels.index.get(label_id)
    path = taxonomy_of(labels.index.labels).path(label_id)
    return LabelDetail(**LabelOut.of(label, path).model_dump(),
                       examples=labels.index.examples(label_id),
                       children=sorted(labels.index.children(label_id)))


def _written(labels: LiveLabels, done: Written) -> LabelWrite:
    return LabelWrite(label=_detail(labels, done.label.id), created=done.created,
                      vectors_added=done.report.vectors_added,
                      vectors_removed=done.report.vectors_removed)
