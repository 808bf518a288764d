"""What the playground shows: the pipeline's own answer, the examples that put each candidate
on the shortlist, and the prompt the LLM would get, all from one retrieval."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from prompts.render import Option, RenderedPrompt, render
from prompts.selector import LLMSelector, Selection, Usage
from prompts.template import load_prompt
from retrieval.fusion import Candidate
from retrieval.index import LabelIndex
from retrieval.taxonomy import taxonomy_of
from service.pipeline import CandidateSource, ClassifyOptions, Pipeline
from service.results import Outcome
from service.settings import Settings

Renderer = Callable[[str, Sequence[Option], int], RenderedPrompt]


@dataclass(frozen=True)
class Explained:
    """One text's outcome with the evidence behind its candidates and, if asked, its prompt."""

    text: str
    outcome: Outcome
    evidence: dict[str, tuple[str, ...]]
    prompt: RenderedPrompt | None = None
    prompt_skipped: bool = False  # no candidates: the LLM would not be called at all


class Recorder:
    """A candidate source that keeps the shortlists it hands out, keyed by text."""

    def __init__(self, inner: CandidateSource) -> None:
        self.inner = inner
        self.index: LabelIndex = inner.index
        self.shortlists: dict[str, list[Candidate]] = {}

    def candidates(self, texts: Sequence[str], top_k: int,
                   within: frozenset[str] | None = None) -> list[list[Candidate]]:
        """The inner source's shortlists, remembered."""
        found = (self.inner.candidates(texts, top_k) if within is None
                 else self.inner.candidates(texts, top_k, within=within))
        self.shortlists.update(zip(texts, found, strict=True))
        return found


class Replay:
    """Hands out shortlists recorded earlier, so a second pass searches nothing."""

    def __init__(self, recorder: Recorder) -> None:
        self.index = recorder.index
        self.shortlists = recorder.shortlists

    def candidates(self, texts: Sequence[str], top_k: int,
                   within: frozenset[str] | None = None) -> list[list[Candidate]]:
        """The recorded shortlist of each text."""
        return [self.shortlists.get(text, []) for text in texts]


class PromptPreview:
    """A selector that renders the prompt it is given and chooses nothing: no LLM call."""

    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer
        self.prompts: dict[str, RenderedPrompt] = {}

    def select(self, text: str, options: Sequence[Option], max_labels: int) -> Selection:
        """Keep the rendered prompt; answer with an empty choice."""
        self.prompts[text] = self.renderer(text, options, max_labels)
        return Selection([], Usage(), 0, 0.0)


def renderer_for(pipeline: Pipeline, settings: Settings) -> Renderer:
    """The configured LLM's own prompt method; without an LLM, the same render call on the
    configured prompt file and token budgets."""
    if isinstance(pipeline.selector, LLMSelector):
        return pipeline.selector.prompt
    template = load_prompt(settings.prompt)
    return lambda text, options, max_labels: render(
        template, text, options, max_labels, max_text_tokens=settings.max_text_tokens,
        max_prompt_tokens=settings.max_prompt_tokens)


def with_evidence(source: CandidateSource) -> CandidateSource:
    """The same retriever, reading the matched example texts (skipped when no LLM needs them)."""
    if getattr(source, "evidence", True):
        return source
    reading = copy.copy(source)
    # Only a source that has the flag gets here (getattr above); the protocol does not declare it.
    reading.evidence = True  # type: ignore[attr-defined]
    return reading


def explain(pipeline: Pipeline, settings: Settings, texts: Sequence[str],
            options: ClassifyOptions, with_prompt: bool = True) -> list[Explained]:
    """Classify `texts` with the pipeline as configured, keeping what the page shows."""
    recorder = Recorder(with_evidence(pipeline.retriever))
    outcomes = pipeline.with_parts(retriever=recorder).classify_batch(texts, options)
    preview = PromptPreview(renderer_for(pipeline, settings))
    if with_prompt:
        # The LLM path itself builds the options (names, paths, examples) and asks the selector.
        pipeline.with_parts(retriever=Replay(recorder), selector=preview).classify_batch(
            list(recorder.shortlists), replace(options, mode="llm"))
    explained = []
    for text, outcome in zip(texts, outcomes, strict=True):
        shortlist = recorder.shortlists.get(text, [])
        prompt = preview.prompts.get(text)
        explained.append(Explained(
            text, outcome, {c.label_id: c.evidence for c in shortlist}, prompt,
            prompt_skipped=with_prompt and prompt is None and text in recorder.shortlists))
    return explained


def path_names(index: LabelIndex, label_id: str) -> list[str]:
    """Names of a label's ancestors, root first."""
    labels = index.labels
    return [labels[a].name for a in taxonomy_of(labels).path(label_id) if a in labels]
