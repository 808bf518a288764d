"""The infer step's answers remembered like the select step's, in the same store and counts."""

from __future__ import annotations

from dataclasses import replace

from prompts.answer_cache import CachedSelector, KeyValueStore
from prompts.infer import Inference, InferringSelector


class CachedInferringSelector(CachedSelector):
    """A CachedSelector over an InferringSelector: both steps' answers are cached."""

    def __init__(self, selector: InferringSelector, store: KeyValueStore) -> None:
        super().__init__(selector, store)
        self.inferring = selector

    def infer(self, text: str) -> Inference:
        """A cached inference (no call made), or a real call whose phrases are then cached."""
        inner = self.inferring
        key = self.key("llm-infer", inner.infer_request(text, self.first_dialect()),
                       inner.max_phrases)
        if (record := self.recall(key)) is not None:
            return replace(Inference.from_json(record), attempts=0)
        inference = inner.infer(text)
        self.keep(key, inference.to_json())
        return inference
