"""Swappable parts by name: embedder backends, selectors and candidate stages (one line each).

As Annif's backend registry: a name maps to `module:attribute`, imported only when used, so a
new part is one module plus one line here, and a part whose dependency is missing fails only
when chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from retrieval.errors import LabelrankError

# name -> a callable (model, batch_size, threads, cache_dir) -> Embedder
EMBEDDER_BACKENDS: dict[str, str] = {
    "onnx": "retrieval.onnx_embedder:OnnxEmbedder.fp32",
    "onnx-int8": "retrieval.onnx_embedder:OnnxEmbedder.int8",
    "torch": "retrieval.embedder:SentenceTransformerEmbedder.from_spec",
}

# name -> a callable (settings) -> Selector | None; `auto` picks llm when an endpoint is set.
SELECTORS: dict[str, str] = {
    "llm": "service.factory:build_llm_selector",
    "none": "service.factory:no_selector",
}

# name -> a stage class (retrieval.stages.StageKind: its settings, `from_settings`, the values
# calibration tries), applied and calibrated in this order.
CANDIDATE_STAGES: dict[str, str] = {
    "subqueries": "retrieval.subqueries:SubqueryStage",
    "lexical": "retrieval.lexical:LexicalStage",
    "head": "retrieval.head:HeadStage",
    "tokens": "retrieval.late_interaction:TokenMatchStage",
    "branch": "retrieval.branches:BranchStage",
}


class UnknownPartError(LabelrankError):
    """Raised when a setting names an embedder backend, selector or stage nobody registered."""

    code = "unknown_part"
    status = 400


def lookup(table: dict[str, str], name: str, kind: str) -> Callable[..., Any]:
    """The registered object called `name`, imported now."""
    try:
        target = table[name]
    except KeyError:
        raise UnknownPartError(f"unknown {kind} {name!r}; registered: {', '.join(table)}",
                               kind=kind, name=name) from None
    module, _, attribute = target.partition(":")
    found: Any = import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


def stage_kinds() -> tuple[Any, ...]:
    """The registered candidate-stage classes, in the order they apply (imported now)."""
    return tuple(lookup(CANDIDATE_STAGES, name, "candidate stage") for name in CANDIDATE_STAGES)
