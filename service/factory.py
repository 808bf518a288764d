"""Build the embedder, index, selector and pipeline from settings, in one place."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path

from prompts.breaker import CircuitBreaker
from prompts.deadline import DeadlineTransport
from prompts.selector import LLMConfig, LLMSelector
from prompts.template import load_prompt
from retrieval.branches import BranchConfig
from retrieval.decision import Threshold
from retrieval.embedder import Embedder, SentenceTransformerEmbedder
from retrieval.fusion import Aggregation
from retrieval.index import LabelIndex, chroma_client
from retrieval.onnx_embedder import OnnxEmbedder
from retrieval.retriever import Retriever
from retrieval.subqueries import SubqueryConfig
from service.pipeline import Pipeline
from service.settings import Settings


def make_embedder(model: str, backend: str, batch_size: int, threads: int | None,
                  cache: Path | None) -> Embedder:
    """Load an embedder on the given backend."""
    if backend == "torch":
        return SentenceTransformerEmbedder(model, batch_size=batch_size, threads=threads)
    precision = "int8" if backend == "onnx-int8" else "fp32"
    return OnnxEmbedder(model, precision=precision, batch_size=batch_size, threads=threads,
                        cache_dir=cache)


def _embedder_spec(settings: Settings) -> tuple:
    return (settings.embedder, settings.embedder_backend, settings.embed_batch_size,
            settings.embed_threads, settings.embedder_cache)


def embedder_factory(settings: Settings) -> Callable[[], Embedder]:
    """A picklable constructor of the configured embedder, for a worker process."""
    return partial(make_embedder, *_embedder_spec(settings))


@lru_cache(maxsize=4)
def _cached_embedder(spec: tuple) -> Embedder:
    return make_embedder(*spec)


def build_embedder(settings: Settings) -> Embedder:
    """The configured embedder, loaded once per process."""
    return _cached_embedder(_embedder_spec(settings))


def build_index(settings: Settings, embedder: Embedder | None = None) -> LabelIndex:
    """The label index on the embedded directory, or on a Chroma server when a host is set."""
    client = chroma_client(settings.db, settings.chroma_host, settings.chroma_port)
    hnsw = {"ef_construction": settings.hnsw_ef_construction,
            "ef_search": settings.hnsw_ef_search, "max_neighbors": settings.hnsw_max_neighbors}
    return LabelIndex(client, embedder or build_embedder(settings), name=settings.collection,
                      hnsw=hnsw)


@lru_cache(maxsize=16)
def endpoint_breaker(base_url: str | None, fail_max: int, reset_s: float) -> CircuitBreaker:
    """One breaker per endpoint and process, so a rebuilt pipeline keeps the endpoint's state."""
    return CircuitBreaker(fail_max, reset_s)


def build_selector(settings: Settings) -> LLMSelector | None:
    """The LLM selector, or None when no endpoint is configured."""
    if not settings.llm_configured:
        return None
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
        max_text_tokens=settings.max_text_tokens, max_prompt_tokens=settings.max_prompt_tokens,
        schema_slots=max(settings.top_k, 20),
    )
    return LLMSelector(client, load_prompt(settings.prompt), config, breaker)


CALIBRATED_FIELDS = ("aggregation", "rrf_k", "max_hits_per_label", "threshold",
                     "relative_threshold", "max_labels", "retrieval_mode", "branch_depth",
                     "branches", "relative_per_branch")


def effective_settings(settings: Settings, index: LabelIndex) -> Settings:
    """Settings with the index's calibration applied where the user set nothing explicitly."""
    calibrated = (index.calibration() or {}).get("settings", {})
    updates = {name: value for name, value in calibrated.items()
               if name in CALIBRATED_FIELDS and name not in settings.model_fields_set}
    return settings.model_copy(update=updates) if updates else settings


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
    subqueries = SubqueryConfig(settings.subqueries, settings.subquery_max_words,
                                settings.subquery_weight, settings.subquery_neighbours
                                ) if settings.subqueries else None
    branching = (BranchConfig(settings.branch_depth, settings.branches)
                 if settings.retrieval_mode == "branch" else None)
    selector = build_selector(settings)
    retriever = Retriever(index, aggregation, settings.neighbours, subqueries,
                          settings.lexical_weight, branching, evidence=selector is not None)
    return Pipeline(retriever, threshold,
                    top_k=settings.top_k, selector=selector,
                    max_text_chars=settings.max_text_chars,
                    llm_concurrency=settings.llm_concurrency)
