"""What the playground shows: the pipeline's own answer, the examples that put each candidate
on the shortlist, and the prompt the LLM would get, all from one retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from prompts.render import RenderedPrompt, render
from prompts.selector import LLMSelector
from prompts.template import load_prompt
from retrieval.index import LabelIndex
from retrieval.taxonomy import taxonomy_of
from service.adapters import PromptOnly, Recording, Renderer, Replaying, with_evidence
from service.pipeline import ClassifyOptions, Pipeline
from service.results import Outcome
from service.settings import Settings


@dataclass(frozen=True)
class Explained:
    """One text's outcome with the evidence behind its candidates and, if asked, its prompt."""

    text: str
    outcome: Outcome
    evidence: dict[str, tuple[str, ...]]
    prompt: RenderedPrompt | None = None
    prompt_skipped: bool = False  # no candidates: the LLM would not be called at all


def renderer_for(pipeline: Pipeline, settings: Settings) -> Renderer:
    """The configured LLM's own prompt method; without an LLM, the same render call on the
    configured prompt file and token budgets."""
    if isinstance(pipeline.selector, LLMSelector):
        return pipeline.selector.prompt
    template = load_prompt(settings.prompt)
    return lambda text, options, max_labels: render(
        template, text, options, max_labels, max_text_tokens=settings.max_text_tokens,
        max_prompt_tokens=settings.max_prompt_tokens)


def explain(pipeline: Pipeline, settings: Settings, texts: Sequence[str],
            options: ClassifyOptions, with_prompt: bool = True) -> list[Explained]:
    """Classify `texts` with the pipeline as configured, keeping what the page shows."""
    recorder = Recording(with_evidence(pipeline.retriever))
    outcomes = pipeline.with_parts(retriever=recorder).classify_batch(texts, options)
    preview = PromptOnly(renderer_for(pipeline, settings))
    if with_prompt:
        # The LLM path itself builds the options (names, paths, examples) and asks the selector.
        replay = Replaying(recorder.index, recorder.shortlists)
        pipeline.with_parts(retriever=replay, selector=preview).classify_batch(
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
