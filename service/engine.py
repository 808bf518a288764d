"""The one core object every front end shares: effective settings, index, pipeline, live labels."""

from __future__ import annotations

from dataclasses import dataclass, field

from retrieval.index import LabelIndex
from service.factory import build_index, effective_settings, pipeline_for, setting_sources
from service.labels.editor import LiveLabels
from service.pipeline import Pipeline
from service.settings import Settings


@dataclass
class Engine:
    """What the CLI, the API, batch and eval all run on, built once from settings.

    `settings` are the effective ones: the calibration saved with the index fills in what the
    user did not set explicitly. Nothing downstream recomputes them.
    """

    settings: Settings
    pipeline: Pipeline
    labels: LiveLabels
    # Per calibrated field: explicit, labeled, self, shape or default (factory.setting_sources).
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def index(self) -> LabelIndex:
        """The label index behind the pipeline."""
        return self.pipeline.index

    def describe(self) -> dict[str, object]:
        """What the index holds and the retrieval in effect (the `labelrank info` answer)."""
        index = self.index
        pipeline = self.pipeline
        assignable = [lid for lid, label in index.labels.items() if label.assignable]
        head = index.head()
        return {
            "db": str(self.settings.chroma_host or self.settings.db),
            "index": index.fingerprint(), "embedder_backend": index.embedder.backend,
            "assignable_labels": len(assignable),
            "vectors": index.vector_count(), "retrieval": pipeline.retriever.describe(),
            "top_k": pipeline.top_k, "threshold": pipeline.threshold.__dict__,
            "calibration": index.calibration(), "settings_from": self.sources,
            "llm": pipeline.selector is not None,
            # on or off, when, on which model, how many labels it scores without a weight
            "head": ({**head.describe(assignable, self.settings.head_weight), "trained": True}
                     if head else {"on": False, "trained": False}),
        }


def open_engine(settings: Settings, index: LabelIndex | None = None) -> Engine:
    """The engine on the configured index (or the given one), calibration applied."""
    index = index or build_index(settings)
    effective = effective_settings(settings, index)
    feedback_log = effective.feedback_log or effective.db / "feedback.jsonl"
    return Engine(effective, pipeline_for(effective, index),
                  LiveLabels(index, effective.max_text_chars, feedback_log),
                  setting_sources(settings, index))
