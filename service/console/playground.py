"""The playground: texts in, each answer explained (candidates, evidence, reason, prompt)."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from pydantic import Field

from retrieval.errors import InvalidTextError
from service.api.auth import require_read
from service.api.models import BatchTooLargeError, ClassifyOptionsIn
from service.api.routes import PipelineDep, StateDep
from service.console.explain import explain, path_names
from service.console.templating import render
from service.pipeline import ClassifyOptions

NONE_REASONS = {
    "below_threshold": "No candidate was close enough: none reached the calibrated threshold.",
    "llm_rejected_all": "The LLM read the candidates and chose none of them.",
    "subtree_empty": "Nothing in the chosen subtree was near the text.",
    "no_candidates": "The index returned no candidates at all (is it empty?).",
}

router = APIRouter(dependencies=[Depends(require_read)], include_in_schema=False)


class PlaygroundIn(ClassifyOptionsIn):
    """The playground form: texts one per line and the per-request knobs."""

    texts: str = Field(max_length=2_000_000)


@router.post("/console/classify", response_class=HTMLResponse)
async def classify(body: PlaygroundIn, state: StateDep, pipeline: PipelineDep) -> Any:
    """Each text's answer as the playground shows it."""
    texts = [line.strip() for line in body.texts.splitlines() if line.strip()]
    if not texts:
        raise InvalidTextError("type at least one text (one per line)", field="texts")
    limit = state.settings.max_batch_items
    if len(texts) > limit:
        raise BatchTooLargeError(f"{len(texts)} texts; the limit is {limit}", limit=limit)
    options = ClassifyOptions(mode=body.mode, top_k=body.top_k, max_labels=body.max_labels,
                              subtree=body.subtree)
    settings = state.engine.settings if state.engine else state.settings
    results = await anyio.to_thread.run_sync(explain, pipeline, settings, texts, options)
    state.metrics.observe([r.outcome for r in results], "console")
    return HTMLResponse(render("_results.html", results=results, none_reasons=NONE_REASONS,
                               path_names=lambda i: path_names(pipeline.index, i),
                               llm=pipeline.selector is not None))
