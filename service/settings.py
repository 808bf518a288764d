"""One typed settings object, read from the environment and `.env` once, then passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of labelrank; env prefix LABELRANK_ (OpenAI's own variable names also work)."""

    # Empty values mean "not set", so a copy of .env.example works as it is.
    model_config = SettingsConfigDict(env_prefix="LABELRANK_", env_file=".env",
                                      extra="ignore", populate_by_name=True,
                                      env_ignore_empty=True)

    # Index and embedder
    db: Path = Path("labelrank-data")
    chroma_host: str | None = None
    chroma_port: int = 8000
    collection: str = "labelrank"
    embedder: str = "all-MiniLM-L6-v2"
    embedder_backend: str = "onnx"  # a name in service.registry.EMBEDDER_BACKENDS
    embedder_cache: Path | None = None
    embed_batch_size: int = Field(128, ge=1)
    embed_threads: int | None = Field(None, ge=1)
    index_worker_min_texts: int = Field(20_000, ge=0)
    max_examples_per_label: int = Field(0, ge=0)
    prototypes: bool = False
    hnsw_ef_construction: int = Field(100, ge=8)
    hnsw_ef_search: int = Field(100, ge=8)
    hnsw_max_neighbors: int = Field(16, ge=4)
    # The server compacts the index (retrieval/generations.py) once the graph slots that label
    # writes left dead outnumber this share of the live ones and this many (today's values, as
    # generations.COMPACT_RATIO and COMPACT_MIN; low ones make a soak cross compactions).
    compact_dead_ratio: float = Field(0.5, ge=0)
    compact_min_dead_slots: int = Field(50_000, ge=0)

    # Retrieval
    neighbours: int = Field(100, ge=1, le=2000)
    top_k: int = Field(30, ge=1, le=200)
    aggregation: Literal["rrf", "max"] = "rrf"
    rrf_k: float = Field(1.0, ge=0)
    max_hits_per_label: int = Field(3, ge=0)
    threshold: float = Field(0.4, ge=-1, le=1)
    relative_threshold: float = Field(0.5, ge=0, le=1)
    relative_per_branch: bool = False
    max_labels: int = Field(5, ge=1, le=100)
    max_text_chars: int = Field(20_000, ge=1)
    subqueries: int = Field(0, ge=0, le=5)
    subquery_weight: float = Field(0.5, ge=0, le=1)
    subquery_max_words: int = Field(40, ge=1)
    subquery_neighbours: int = Field(20, ge=1, le=500)
    lexical_weight: float = Field(0.0, ge=0, le=1)
    retrieval_mode: Literal["flat", "branch"] = "flat"
    branch_depth: int = Field(0, ge=0, le=32)
    branches: int = Field(3, ge=1, le=100)
    self_calibration_texts: int = Field(400, ge=0)
    # `labelrank index` stops self-calibration trying settings after this many seconds of work
    # (counted as the reference machine takes it: the same stop on any machine), or after the
    # index's embedding work when that was more (what was left is named).
    self_calibration_seconds: float = Field(30.0, gt=0)
    # The out-of-scope share expected in traffic: self-calibration weighs its "none"
    # pseudo-queries as that share of all (unset: as many as the pseudo set holds, 1-15%).
    self_calibration_none_share: float | None = Field(None, ge=0, le=0.95)
    # The share of texts with several labels expected in traffic: that share of the
    # pseudo-queries is composed of two or three labels' texts (0 for single-label traffic).
    # (The default is retrieval.calibration.pseudo_queries.COMPOSED_SHARE, kept light here.)
    self_calibration_multi_share: float = Field(0.4, ge=0, le=0.9)
    calibration_min_texts_per_s: float = Field(0.0, ge=0)
    # Learned head (retrieval/head.py): the weight of its probability in a candidate's score
    # (1: order by the head alone; 0: off); used only when the index holds a trained head.
    # Off until calibration (self, labeled or fit) weighs it against the shortlist without it.
    head_weight: float = Field(0.0, ge=0, le=1)
    # Token matching (retrieval/late_interaction.py): the weight of a candidate's token-level
    # match (its name's and aliases' tokens against the text's) in its score; 0 = off.
    token_match_weight: float = Field(0.0, ge=0, le=1)
    head_train: bool = True  # at the end of `labelrank index`, when labels have examples
    head_mode: Literal["ovr", "softmax"] = "ovr"  # a sigmoid per label, or a shortlist softmax
    head_epochs: int = Field(10, ge=1)
    head_min_steps: int = Field(300, ge=0)  # a small catalog trains for more passes, to this
    # Bounds training whatever the catalog's size, in seconds of work (the same head anywhere).
    head_max_seconds: float = Field(120.0, gt=0)
    head_hard_negatives: int = Field(15, ge=0)  # labels near an example's own, per example
    head_random_negatives: int = Field(5, ge=0)

    # Choosing among candidates: auto (the LLM when an endpoint is set), llm, none, or any name
    # in service.registry.SELECTORS.
    selector: str = "auto"

    # LLM (any OpenAI-compatible endpoint)
    llm_base_url: str | None = Field(
        None, validation_alias=AliasChoices("LABELRANK_LLM_BASE_URL", "OPENAI_BASE_URL"))
    llm_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LABELRANK_LLM_API_KEY", "OPENAI_API_KEY"))
    llm_model: str = "gpt-4o-mini"
    llm_response_format: Literal["auto", "json_schema", "json_object", "none"] = "auto"
    llm_timeout_s: float = Field(30.0, gt=0)
    llm_max_attempts: int = Field(4, ge=1)
    llm_max_wait_s: float = Field(20.0, ge=0)
    llm_max_total_s: float = Field(60.0, gt=0)  # every attempt and wait of one text together
    llm_concurrency: int = Field(8, ge=1)
    llm_breaker_failures: int = Field(5, ge=0)
    llm_breaker_reset_s: float = Field(30.0, gt=0)
    llm_temperature: float = 0.0
    llm_max_answer_tokens: int | None = None
    llm_prices: dict[str, tuple[float, float]] = Field(default_factory=lambda: {
        "gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00), "gpt-4.1": (2.00, 8.00),
        "gpt-4.1-mini": (0.40, 1.60), "gpt-4.1-nano": (0.10, 0.40)})
    prompt: str = "select_labels@v1"
    # The infer step (docs/infer.md): in LLM mode, one more call per text first asks for the
    # label-like phrases it implies, each searched as a sub-query beside the text.
    llm_infer: bool = False
    llm_infer_phrases: int = Field(5, ge=1, le=20)
    llm_infer_prompt: str = "infer_phrases@v1"
    max_text_tokens: int = Field(1500, ge=16)
    max_prompt_tokens: int = Field(6000, ge=256)

    # HTTP API
    api_key: SecretStr | None = None
    api_write_key: SecretStr | None = None
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_batch_items: int = Field(256, ge=1)
    microbatch_size: int = Field(32, ge=1)
    microbatch_wait_ms: float = Field(2.0, ge=0)
    index_refresh_s: float = Field(1.0, ge=0)
    feedback_log: Path | None = None

    @field_validator("embedder_backend", mode="after")
    @classmethod
    def _registered_backend(cls, value: str) -> str:
        from service.registry import EMBEDDER_BACKENDS

        if value not in EMBEDDER_BACKENDS:
            raise ValueError(f"unknown embedder backend {value!r}; registered: "
                             f"{', '.join(EMBEDDER_BACKENDS)}")
        return value

    @field_validator("llm_base_url", "chroma_host", mode="after")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("api_key", "api_write_key", mode="after")
    @classmethod
    def _blank_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value and value.get_secret_value() else None

    @property
    def llm_configured(self) -> bool:
        """True when an endpoint or an API key is set."""
        return bool(self.llm_base_url or self.llm_api_key)


def get_settings(**overrides: object) -> Settings:
    """Build settings from env and `.env`, with explicit overrides (CLI flags) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
