"""Build the embedder, index, selector and pipeline from settings, in one place."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from prompts.breaker import CircuitBreaker
from prompts.deadline import DeadlineTransport
from prompts.infer import InferringSelector, load_infer_prompt
from prompts.selector import LLMConfig, LLMSelector
from prompts.template import load_prompt
from retrieval.calibration.scoring import BASE_FIELDS
from retrieval.calibration.search import SearchSpace
from retrieval.decision import Threshold
from retrieval.embedder import Embedder
from retrieval.fusion import Aggregation
from retrieval.index import LabelIndex, chroma_client, index_metadata
from retrieval.retriever import Retriever
from retrieval.stages import CandidateStage
from service.pipeline import Pipeline, Selector
from service.registry import EMBEDDER_BACKENDS, SELECTORS, lookup, stage_kinds
from service.settings import Settings


def make_embedder(model: str, backend: str, batch_size: int, threads: int | None,
                  cache: Path | None) -> Embedder:
    """Load an embedder on the given (registered) backend."""
    return lookup(EMBEDDER_BACKENDS, backend, "embedder backend")(model, batch_size, threads,
                                                                   cache)


def _embedder_spec(settings: Settings) -> tuple:
    return (settings.embedder, settings.embedder_backend, settings.embed_batch_size,
            settings.embed_threads, settings.embedder_cache)


def embedder_factory(settings: Settings) -> Callable[[], Embedder]:
    """A picklable constructor of the configured embedder, for a worker process."""
    return partial(make_embedder, *_embedder_spec(with_index_embedder(settings)))


@lru_cache(maxsize=4)
def _cached_embedder(spec: tuple) -> Embedder:
    return make_embedder(*spec)


def build_embedder(settings: Settings) -> Embedder:
    """The configured embedder (or the index's own, see `with_index_embedder`), loaded once
    per process."""
    return _cached_embedder(_embedder_spec(with_index_embedder(settings)))


def with_index_embedder(settings: Settings) -> Settings:
    """Settings whose embedder is the one the index records, when the user set none and it
    is a model directory on this machine (`labelrank fit` keeps a tuned one inside the index
    directory): an index answers with the model that built it without being told."""
    if "embedder" in settings.model_fields_set or (
            settings.chroma_host is None and not (settings.db / "chroma.sqlite3").is_file()):
        return settings
    try:
        client = chroma_client(settings.db, settings.chroma_host, settings.chroma_port)
        stored = index_metadata(client, settings.collection).get("embedder")
    except Exception:  # no index yet, or none readable: opening it will say why
        return settings
    return (settings.model_copy(update={"embedder": stored})
            if index_embedder(settings, stored) != settings.embedder else settings)


def index_embedder(settings: Settings, stored: object) -> str:
    """The embedder to open an index with that records `stored`: the configured one when set
    explicitly, else the recorded one if it is a model directory here."""
    if ("embedder" not in settings.model_fields_set and isinstance(stored, str)
            and stored != settings.embedder and Path(stored).is_dir()):
        return stored
    return settings.embedder


def build_index(settings: Settings, embedder: Embedder | None = None,
                client: Any = None) -> LabelIndex:
    """The label index on the embedded directory, or on a Chroma server when a host is set
    (`client`: an open Chroma client to reuse)."""
    client = client or chroma_client(settings.db, settings.chroma_host, settings.chroma_port)
    hnsw = {"ef_construction": settings.hnsw_ef_construction,
            "ef_search": settings.hnsw_ef_search, "max_neighbors": settings.hnsw_max_neighbors}
    # An explicit LABELRANK_PROTOTYPES turns prototypes on or off; unset, the index keeps its own.
    prototypes = settings.prototypes if "prototypes" in settings.model_fields_set else None
    return LabelIndex(client, embedder or build_embedder(settings), name=settings.collection,
                      hnsw=hnsw, prototypes=prototypes, compact_ratio=settings.compact_dead_ratio,
                      compact_min=settings.compact_min_dead_slots)


@lru_cache(maxsize=16)
def endpoint_breaker(base_url: str | None, fail_max: int, reset_s: float) -> CircuitBreaker:
    """One breaker per endpoint and process, so a rebuilt pipeline keeps the endpoint's state."""
    return CircuitBreaker(fail_max, reset_s)


def build_selector(settings: Settings) -> Selector | None:
    """The configured selector (`auto`: the LLM when an endpoint is set), or None."""
    name = settings.selector
    if name == "auto":
        name = "llm" if settings.llm_configured else "none"
    return lookup(SELECTORS, name, "selector")(settings)


def no_selector(settings: Settings) -> None:
    """Retrieval only: the calibrated threshold chooses."""
    return None


def build_llm_selector(settings: Settings) -> LLMSelector:
    """The LLM selector on the configured OpenAI-compatible endpoint."""
    import httpx
    import openai

    client = openai.OpenAI(
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else "unused",
        timeout=settings.llm_timeout_s,
        max_retries=0,  # tenacity in the selector is the only retry layer
        # The timeout bounds the whole answer, not each read: a trickling server cannot
        # hold a worker for minutes.
        http_client=httpx.Client(transport=DeadlineTransport(settings.llm_timeout_s),
                                 timeout=settings.llm_timeout_s),
    )
    breaker = (endpoint_breaker(settings.llm_base_url, settings.llm_breaker_failures,
                                settings.llm_breaker_reset_s)
               if settings.llm_breaker_failures else None)
    config = LLMConfig(
        model=settings.llm_model, response_format=settings.llm_response_format,
        temperature=settings.llm_temperature, max_answer_tokens=settings.llm_max_answer_tokens,
        max_attempts=settings.llm_max_attempts, max_wait_s=settings.llm_max_wait_s,
        max_total_s=settings.llm_max_total_s,
        max_text_tokens=settings.max_text_tokens, max_prompt_tokens=settings.max_prompt_tokens,
        schema_slots=max(settings.top_k, 20),
    )
    template = load_prompt(settings.prompt)
    if settings.llm_infer:
        return InferringSelector(client, template, config, breaker,
                                 load_infer_prompt(settings.llm_infer_prompt),
                                 settings.llm_infer_phrases)
    return LLMSelector(client, template, config, breaker)


def build_stages(settings: Settings) -> list[CandidateStage]:
    """The registered candidate stages that the settings switch on, in registry order."""
    stages = (kind.from_settings(settings) for kind in stage_kinds())
    return [stage for stage in stages if stage is not None]


def calibrated_fields() -> tuple[str, ...]:
    """Every Settings field calibration chooses: the base ones and each registered stage's."""
    return (*BASE_FIELDS, *(name for kind in stage_kinds() for name in kind.fields))


def search_space(settings: Settings, **levers: Any) -> SearchSpace:
    """The calibration search over every registered stage, starting from these settings
    (`levers`: SearchSpace fields to narrow it, e.g. `depths=(50,)`)."""
    kinds = stage_kinds()
    # A field Settings does not declare is set by calibration only; it starts switched off.
    start = {name: getattr(settings, name, kind.off.get(name))
             for kind in kinds for name in kind.fields}
    return SearchSpace(kinds, start, **levers)

def effective_settings(settings: Settings, index: LabelIndex) -> Settings:
    """Settings with the index's calibration (and the embedder it was opened with) applied
    where the user set nothing explicitly."""
    updates = {name: value for name, value in _saved(index).items()
               if name not in settings.model_fields_set}
    if "embedder" not in settings.model_fields_set and index.embedder.name != settings.embedder:
        updates["embedder"] = index.embedder.name
    return settings.model_copy(update=updates) if updates else settings


def setting_sources(settings: Settings, index: LabelIndex) -> dict[str, str]:
    """Where each calibrated field of the effective settings comes from: `explicit` (env,
    `.env` or a flag), the dev set of the saved calibration (`labeled`, `self`), the catalog's
    `shape`, or the built-in `default`."""
    record = index.calibration() or {}
    saved = _saved(index)
    # Records written before sources were kept came from labeled data.
    sources = record.get("sources") or dict.fromkeys(saved, "labeled")
    return {name: "explicit" if name in settings.model_fields_set
            else sources.get(name, "labeled") if name in saved else "default"
            for name in calibrated_fields()}


def _saved(index: LabelIndex) -> dict[str, object]:
    calibrated = (index.calibration() or {}).get("settings", {})
    fields = calibrated_fields()
    return {name: value for name, value in calibrated.items() if name in fields}


def build_pipeline(settings: Settings, index: LabelIndex | None = None) -> Pipeline:
    """The whole pipeline as configured (calibration saved with the index fills the gaps)."""
    index = index or build_index(settings)
    return pipeline_for(effective_settings(settings, index), index)


def pipeline_for(settings: Settings, index: LabelIndex) -> Pipeline:
    """The pipeline of already effective settings on `index`."""
    aggregation = Aggregation(settings.aggregation, settings.rrf_k,
                              settings.max_hits_per_label or None)
    threshold = Threshold(settings.threshold, settings.relative_threshold, settings.max_labels,
                          settings.relative_per_branch)
    selector = build_selector(settings)
    retriever = Retriever(index, aggregation, settings.neighbours, build_stages(settings),
                          evidence=selector is not None)
    return Pipeline(retriever, threshold,
                    top_k=settings.top_k, selector=selector,
                    max_text_chars=settings.max_text_chars,
                    llm_concurrency=settings.llm_concurrency)
