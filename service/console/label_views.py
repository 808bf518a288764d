"""The label browser's fragments: search, one level of the tree, one label in full.

Edits go through the API's own label routes (PUT, PATCH, DELETE /v1/labels, /v1/feedback);
these routes only read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from retrieval.catalog import Label
from retrieval.taxonomy import taxonomy_of
from service.api.auth import require_read
from service.api.routes import LabelIdPath, LabelsDep, PipelineDep
from service.console.templating import render
from service.labels.editor import LiveLabels

router = APIRouter(dependencies=[Depends(require_read)], include_in_schema=False)
SHOWN = 50


def search(labels: Mapping[str, Label], query: str, limit: int = SHOWN) -> tuple[list[Label], int]:
    """Labels whose id, name or an alias contains `query` (case-insensitive), best first:
    exact matches, then prefixes, then the rest; and how many matched in all."""
    needle = query.strip().casefold()
    ranked = []
    for label in labels.values():
        words = [label.id.casefold(), label.name.casefold(),
                 *(alias.casefold() for alias in label.aliases)]
        if not any(needle in word for word in words):
            continue
        rank = 0 if needle in words else 1 if any(w.startswith(needle) for w in words) else 2
        ranked.append((rank, label.id, label))
    ranked.sort(key=lambda row: row[:2])
    return [label for _, _, label in ranked[:limit]], len(ranked)


def level(labels: Mapping[str, Label], parent: str | None) -> list[tuple[Label, int]]:
    """The children of `parent` (roots for None), by name, each with its own child count."""
    counts = Counter(label.parent for label in labels.values())
    below = [lab for lab in labels.values() if lab.parent == parent]
    return [(lab, counts[lab.id]) for lab in sorted(below, key=lambda lab: lab.name.casefold())]


@router.get("/console/labels/search", response_class=HTMLResponse)
async def search_labels(pipeline: PipelineDep,
                        q: Annotated[str, Query(max_length=256)] = "") -> Any:
    """Matching labels as a list of links."""
    labels = pipeline.index.labels
    found, total = search(labels, q) if q.strip() else ([], 0)
    return HTMLResponse(render("_label_list.html", labels=found, total=total, query=q,
                               shown=SHOWN, paths=_paths(labels)))


@router.get("/console/labels/tree", response_class=HTMLResponse)
async def tree(pipeline: PipelineDep,
               parent: Annotated[str | None, Query(max_length=256)] = None) -> Any:
    """One level of the taxonomy; deeper levels load when opened."""
    labels = pipeline.index.labels
    return HTMLResponse(render("_tree.html", rows=level(labels, parent or None),
                               total=len(labels), root=not parent))


@router.get("/console/label/{label_id:path}", response_class=HTMLResponse)
async def label_detail(label_id: LabelIdPath, labels: LabelsDep) -> Any:
    """A label with its description, aliases, examples, children and edit forms."""
    return HTMLResponse(await anyio.to_thread.run_sync(_detail, labels, label_id))


def _detail(labels: LiveLabels, label_id: str) -> str:
    index = labels.index
    label = index.get(label_id)
    snapshot = index.labels
    children = sorted((snapshot[c] for c in index.children(label_id) if c in snapshot),
                      key=lambda lab: lab.name.casefold())
    return render("_label.html", label=label, examples=index.examples(label_id),
                  children=children, ancestors=[snapshot[a] for a in
                                                taxonomy_of(snapshot).path(label_id)])


def _paths(labels: Mapping[str, Label]) -> Any:
    taxonomy = taxonomy_of(labels)
    return lambda label_id: " › ".join(labels[a].name for a in taxonomy.path(label_id)
                                       if a in labels)
