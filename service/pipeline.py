"""The one pipeline every front end calls: texts -> candidates -> choice -> results."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from prompts.infer import Inference
from prompts.render import Option
from prompts.selector import LLMError, Selection
from retrieval.catalog import Label
from retrieval.decision import Threshold, choose, why_none
from retrieval.errors import InvalidTextError, LabelrankError, TextTooLongError
from retrieval.fusion import Candidate
from retrieval.index import LabelIndex
from retrieval.taxonomy import taxonomy_of
from service.results import (
    ClassifyResult,
    ItemError,
    LabelScore,
    NoneReason,
    Outcome,
    rounded,
)

Mode = Literal["auto", "llm", "retrieval"]


class CandidateSource(Protocol):
    """Shortlists labels for a batch of texts."""

    index: LabelIndex

    def candidates(self, texts: Sequence[str], top_k: int, within: frozenset[str] | None = None,
                   phrases: Sequence[Sequence[str]] | None = None) -> list[list[Candidate]]:
        """Each text's shortlist (`phrases`: per text, more queries searched beside it)."""
        ...

    def describe(self) -> str:
        """The retrieval method in a few words (run files, caches, `labelrank info`)."""
        ...


class Selector(Protocol):
    """Chooses among candidates for one text."""

    def select(self, text: str, options: Sequence[Option], max_labels: int) -> Selection: ...


@runtime_checkable
class Inferring(Protocol):
    """A selector that also names the label-like phrases a text implies (the infer step)."""

    def infer(self, text: str) -> Inference: ...


class NoLLMConfigured(LabelrankError):
    """Raised when LLM mode is asked for and no LLM endpoint is configured."""

    code = "llm_not_configured"
    status = 400


@dataclass(frozen=True)
class ClassifyOptions:
    """Per-call choices; None means the pipeline's default."""

    mode: Mode = "auto"
    top_k: int | None = None
    max_labels: int | None = None
    subtree: str | None = None  # only labels at or below this id


def check_text(text: object, max_chars: int) -> None:
    """Refuse a text with nothing printable in it, or one longer than `max_chars`."""
    if not isinstance(text, str) or not any(c.isprintable() and not c.isspace() for c in text):
        raise InvalidTextError("text is empty (no printable characters)", field="text")
    if len(text) > max_chars:
        raise TextTooLongError(f"text has {len(text)} characters; the limit is {max_chars}",
                               field="text", limit=max_chars)


class Pipeline:
    """Retrieval, then the LLM (or the threshold), for batches of texts."""

    def __init__(self, retriever: CandidateSource, threshold: Threshold, top_k: int,
                 selector: Selector | None = None, max_text_chars: int = 20_000,
                 llm_concurrency: int = 8) -> None:
        self.retriever = retriever
        self.threshold = threshold
        self.top_k = top_k
        self.selector = selector
        self.max_text_chars = max_text_chars
        self.llm_concurrency = llm_concurrency
        self._pool = ThreadPoolExecutor(max_workers=llm_concurrency,
                                        thread_name_prefix="labelrank-llm")
        self._facts: tuple[Mapping[str, Label], Callable[[str], tuple[str, list[str] | None]
                                                          | None]] | None = None

    def with_parts(self, retriever: CandidateSource | None = None,
                   selector: Selector | None = None) -> Pipeline:
        """The same pipeline with another retriever or selector (caching, replay, staging)."""
        return Pipeline(retriever or self.retriever, self.threshold, self.top_k,
                        selector or self.selector, self.max_text_chars,
                        self.llm_concurrency)

    @property
    def index(self) -> LabelIndex:
        """The label index behind the retriever."""
        return self.retriever.index

    def classify(self, text: str, options: ClassifyOptions = ClassifyOptions()) -> ClassifyResult:
        """One text; raises the item's error instead of returning it."""
        self._check_text(text)
        outcome = self.classify_batch([text], options)[0]
        assert isinstance(outcome, ClassifyResult)
        return outcome

    def classify_batch(self, texts: Sequence[str],
                       options: ClassifyOptions = ClassifyOptions()) -> list[Outcome]:
        """One outcome per text, in order: a result, or an error record for that text."""
        mode = self.resolve_mode(options.mode)
        top_k = options.top_k or self.top_k
        max_labels = options.max_labels or self.threshold.max_labels
        within = self._within(options.subtree)
        outcomes: dict[int, Outcome] = {}
        valid: list[int] = []
        for position, text in enumerate(texts):
            try:
                self._check_text(text)
                valid.append(position)
            except LabelrankError as exc:
                outcomes[position] = ItemError(error=exc.to_dict())
        batch = [texts[i] for i in valid]
        selector = self.selector
        inferred = (self._infer(selector, batch)
                    if mode == "llm" and isinstance(selector, Inferring) else [None] * len(batch))
        started = time.perf_counter()
        shortlists = self._shortlists(batch, top_k, within, inferred)
        retrieval_ms = (time.perf_counter() - started) * 1000 / max(len(valid), 1)
        if mode == "llm" and selector is not None:  # resolve_mode refused llm without one
            chosen = self._pool.map(
                lambda args: self._with_llm(selector, *args, max_labels=max_labels,
                                            subtree=options.subtree),
                [(texts[i], cands, inference) for i, cands, inference
                 in zip(valid, shortlists, inferred, strict=True)])
        else:
            chosen = (self._with_threshold(c, max_labels, subtree=options.subtree, scores=s)
                      for c, s in zip(shortlists, self._scores_of(shortlists), strict=True))
        for position, result in zip(valid, chosen, strict=True):
            result.latency_ms = round(result.latency_ms + retrieval_ms, 2)
            outcomes[position] = result
        return [outcomes[position] for position in range(len(texts))]

    def resolve_mode(self, mode: Mode) -> Literal["llm", "retrieval"]:
        """The path `mode` takes here; `llm` without an LLM configured is an error."""
        if mode == "llm" and self.selector is None:
            raise NoLLMConfigured("mode 'llm' needs an LLM endpoint: set LABELRANK_LLM_BASE_URL "
                                  "(or OPENAI_BASE_URL / OPENAI_API_KEY)")
        if mode == "auto":
            return "llm" if self.selector is not None else "retrieval"
        return mode

    def _infer(self, selector: Inferring, texts: list[str]) -> list[Inference | None]:
        """The infer step for each text, concurrently; a failed call is an Inference that says
        why (the text is then searched on its own)."""
        def one(text: str) -> Inference:
            try:
                return selector.infer(text)
            except LLMError as exc:
                return Inference.failure(exc)

        return list(self._pool.map(one, texts))

    def _shortlists(self, texts: list[str], top_k: int, within: frozenset[str] | None,
                    inferred: Sequence[Inference | None]) -> list[list[Candidate]]:
        """Each text's candidates, with its inferred phrases searched beside it when any."""
        phrases = [inference.phrases if inference else [] for inference in inferred]
        extra: dict[str, object] = {} if within is None else {"within": within}
        if any(phrases):
            extra["phrases"] = phrases
        return self.retriever.candidates(texts, top_k, **extra)

    def _check_text(self, text: object) -> None:
        check_text(text, self.max_text_chars)

    def _within(self, subtree: str | None) -> frozenset[str] | None:
        """The label ids a subtree restriction allows; UnknownSubtreeError for an unknown id."""
        return None if subtree is None else taxonomy_of(self.index.labels).subtree(subtree)

    def _with_threshold(self, candidates: list[Candidate], max_labels: int,
                        degraded_reason: str | None = None, subtree: str | None = None,
                        scores: list[LabelScore] | None = None) -> ClassifyResult:
        rule = (self.threshold if max_labels == self.threshold.max_labels
                else replace(self.threshold, max_labels=max_labels))
        scores = self._scores(candidates) if scores is None else scores
        branch = taxonomy_of(self.index.labels).branch
        chosen = choose(candidates, rule, lambda label_id: branch(label_id, 0))
        if chosen:
            by_id = {score.id: score for score in scores}
            return ClassifyResult([by_id[c.label_id] for c in chosen if c.label_id in by_id],
                                  scores, "retrieval", degraded_reason is not None,
                                  degraded_reason)
        none_reason, why = _subtree_empty(subtree) if not candidates and subtree \
            else why_none(candidates, rule)
        return ClassifyResult([], scores, "retrieval", degraded_reason is not None,
                              degraded_reason or why, none_reason)

    def _with_llm(self, selector: Selector, text: str, candidates: list[Candidate],
                  inference: Inference | None, max_labels: int,
                  subtree: str | None = None) -> ClassifyResult:
        result = self._select(selector, text, candidates, max_labels, subtree)
        return result if inference is None else _with_inference(result, inference)

    def _select(self, selector: Selector, text: str, candidates: list[Candidate],
                max_labels: int, subtree: str | None) -> ClassifyResult:
        labels = self.index.labels  # one snapshot: a label deleted meanwhile is simply skipped
        candidates = [c for c in candidates if c.label_id in labels]
        if not candidates:  # nothing to choose from: no call
            none_reason, why = _subtree_empty(subtree) if subtree else why_none([], self.threshold)
            return ClassifyResult(labels=[], candidates=[], mode="llm", reason=why,
                                  none_reason=none_reason)
        try:
            selection = selector.select(text, self.prompt_candidates(candidates, labels),
                                        max_labels)
        except LLMError as exc:
            fallback = self._with_threshold(candidates, max_labels,
                                            degraded_reason=f"llm_failed: {exc.reason}",
                                            subtree=subtree)
            fallback.llm_attempts = exc.attempts
            return fallback
        by_id = {c.label_id: c for c in candidates}
        chosen = [by_id[i] for i in selection.label_ids if i in by_id]
        return ClassifyResult(
            labels=self._scores(chosen), candidates=self._scores(candidates), mode="llm",
            reason=None if chosen else "the LLM chose none of the candidates",
            none_reason=None if chosen else "llm_rejected_all",
            usage=selection.usage,
            dropped_ids=selection.dropped_ids, llm_attempts=selection.attempts,
            latency_ms=selection.latency_s * 1000,
        )

    def prompt_candidates(self, candidates: list[Candidate],
                          labels: Mapping[str, Label] | None = None) -> list[Option]:
        """The candidates as the prompt shows them: names, descriptions, paths, evidence."""
        labels = self.index.labels if labels is None else labels
        taxonomy = taxonomy_of(labels)
        return [Option(c.label_id, labels[c.label_id].name, labels[c.label_id].description,
                       tuple(labels[a].name for a in (*taxonomy.path(c.label_id), c.label_id)),
                       c.evidence)
                for c in candidates]

    def _scores(self, candidates: Sequence[Candidate]) -> list[LabelScore]:
        return self._scores_of([candidates])[0]

    def _scores_of(self, shortlists: Sequence[Sequence[Candidate]]) -> list[list[LabelScore]]:
        """Each shortlist as the result shows it (a label deleted meanwhile is left out)."""
        facts = self._label_facts()
        flat = [c for candidates in shortlists for c in candidates]
        numbers = iter(rounded(np.array([x for c in flat for x in (c.score, c.similarity)])))
        out = []
        for candidates in shortlists:
            scores = []
            for c in candidates:
                score, similarity = next(numbers), next(numbers)
                if (known := facts(c.label_id)) is not None:
                    scores.append(LabelScore(c.label_id, known[0], score, similarity, known[1]))
            out.append(scores)
        return out

    def _label_facts(self) -> Callable[[str], tuple[str, list[str] | None] | None]:
        """A label's name and ancestor path as a result shows them, once per labels snapshot
        (None for a label not in it)."""
        labels = self.index.labels
        if self._facts is None or self._facts[0] is not labels:
            path = taxonomy_of(labels).path
            facts: dict[str, tuple[str, list[str] | None] | None] = {}

            def known(label_id: str) -> tuple[str, list[str] | None] | None:
                found = facts.get(label_id, False)
                if found is False:
                    label = labels.get(label_id)
                    found = facts[label_id] = None if label is None else (
                        label.name, list(path(label_id)) or None)
                return found

            self._facts = (labels, known)
        return self._facts[1]


def _with_inference(result: ClassifyResult, inference: Inference) -> ClassifyResult:
    """The result with the infer step's tokens, calls and time added; degraded when that step
    failed (a failed select step's reason, if any, stays: it says more)."""
    result.usage = result.usage + inference.usage
    result.llm_attempts += inference.attempts
    result.latency_ms += inference.latency_s * 1000
    if inference.failed and not result.degraded:
        result.degraded, result.reason = True, f"llm_infer_failed: {inference.failed}"
    return result


def _subtree_empty(subtree: str | None) -> tuple[NoneReason, str]:
    return "subtree_empty", f"no label below {subtree!r} was among the nearest neighbours"
