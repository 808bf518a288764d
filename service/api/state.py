"""What the API's routes share: the pipeline built once, the micro-batcher, live labels."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from prompts.selector import LLMSelector
from retrieval.embedder import Embedder
from retrieval.errors import LabelrankError
from retrieval.index import LabelIndex, chroma_client, index_metadata
from service.api.maintenance import Maintenance
from service.api.microbatch import MicroBatcher
from service.api.models import NotReadyError
from service.api.prometheus import Metrics
from service.engine import Engine, open_engine
from service.factory import build_embedder, build_index
from service.labels.editor import LiveLabels
from service.locking import hold_directory
from service.pipeline import ClassifyOptions, Pipeline
from service.results import Outcome
from service.settings import Settings

log = logging.getLogger("labelrank.api")


class ServiceState:
    """Settings, metrics and, once loaded, the pipeline and its live label editor."""

    def __init__(self, settings: Settings, metrics: Metrics,
                 load_embedder: Callable[[], Embedder] | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._load_embedder = load_embedder or (lambda: build_embedder(settings))
        self.engine: Engine | None = None
        self.pipeline: Pipeline | None = None
        self.labels: LiveLabels | None = None
        self.error: str | None = None
        size, wait = settings.microbatch_size, settings.microbatch_wait_ms / 1000
        # Retrieval is CPU-bound: two batches in flight (one embeds while the other searches)
        # and the rest wait and merge. LLM batches mostly wait on the network: many at once.
        self.batchers: dict[str, MicroBatcher[tuple[Pipeline, ClassifyOptions], Outcome]] = {
            "retrieval": MicroBatcher(self._run_micro, size, wait, max_in_flight=2),
            "llm": MicroBatcher(self._run_micro, size, wait, max_in_flight=32)}
        self._embedder: Embedder | None = None
        self._dir_lock: IO[str] | None = None
        self._client: Any = None
        self._next_check = 0.0
        self.maintenance = Maintenance(lambda: self.pipeline.index if self.pipeline else None,
                                       on_compacted=self._compacted)

    @property
    def server_mode(self) -> bool:
        """True when the index lives on a Chroma server shared with other workers."""
        return self.settings.chroma_host is not None

    def claim_directory(self) -> None:
        """Embedded mode: take the index directory for this process, or fail at startup."""
        if not self.server_mode:
            self._dir_lock = hold_directory(self.settings.db, "serve")

    def load(self) -> None:
        """Build embedder, index and pipeline (blocking: run it in a worker thread)."""
        try:
            self._embedder = self._load_embedder()
            index = self._open_index()
            finished = index.recover(shared=self.server_mode)
            if finished:
                log.warning("finished %d label write(s) that a crash had interrupted", finished)
            self._install(index)
            self.maintenance.start()
        except LabelrankError as exc:
            self.error = f"{exc.code}: {exc.message}"
        except Exception as exc:  # a readiness answer, not a crash: /readyz reports it
            log.exception("loading the pipeline failed")
            self.error = f"{type(exc).__name__}: {exc}"
        if self.error:
            log.error("labelrank is not ready: %s", self.error)

    def close(self) -> None:
        """Stop the upkeep, then release the index directory."""
        self.maintenance.stop()
        if self._dir_lock is not None:
            self._dir_lock.close()
            self._dir_lock = None

    def require_pipeline(self) -> Pipeline:
        """The pipeline, or NotReadyError while it loads or after loading failed."""
        if self.pipeline is None:
            raise NotReadyError(self.error or "the embedder and the index are still loading",
                                reason=self.error or "loading")
        return self.pipeline

    def require_labels(self) -> LiveLabels:
        """The live label editor, once loaded."""
        self.require_pipeline()
        assert self.labels is not None
        return self.labels

    async def classify_one(self, pipeline: Pipeline, text: str,
                           options: ClassifyOptions) -> Outcome:
        """One text through the micro-batcher for its path."""
        path = pipeline.resolve_mode(options.mode)
        return await self.batchers[path].submit(text, (pipeline, options))

    def run_batch(self, pipeline: Pipeline, texts: Sequence[str], options: ClassifyOptions,
                  source: str) -> list[Outcome]:
        """One pipeline call, counted in the metrics."""
        outcomes = pipeline.classify_batch(texts, options)
        self.metrics.observe(outcomes, source)
        return outcomes

    def refresh_due(self) -> bool:
        """Server mode: whether to look for other workers' label edits now."""
        return self.server_mode and time.monotonic() >= self._next_check

    def refresh_if_changed(self) -> None:
        """Server mode: reload label records when another worker changed them (blocking)."""
        if not self.server_mode or self.pipeline is None or self.labels is None:
            return
        self._next_check = time.monotonic() + self.settings.index_refresh_s
        with self.labels.lock:
            stored = index_metadata(self._client, self.settings.collection)
            if stored.get("catalog_hash") != self.pipeline.index.fingerprint()["catalog_hash"]:
                log.info("labels changed on the Chroma server: reloading them")
                self._install(self._open_index())

    def _open_index(self) -> LabelIndex:
        assert self._embedder is not None
        if self._client is None:
            self._client = chroma_client(self.settings.db, self.settings.chroma_host,
                                         self.settings.chroma_port)
        return build_index(self.settings, self._embedder, self._client)

    def _install(self, index: LabelIndex) -> None:
        engine = open_engine(self.settings, index=index)
        if self.labels is not None:
            engine.labels.lock = self.labels.lock  # one writer at a time across reloads
        self.engine, self.pipeline, self.labels = engine, engine.pipeline, engine.labels

    def _compacted(self, dropped: int, seconds: float) -> None:
        self.metrics.compactions.inc()
        self.metrics.compaction_seconds.observe(seconds)

    def _run_micro(self, texts: Sequence[str],
                   key: tuple[Pipeline, ClassifyOptions]) -> list[Outcome]:
        return self.run_batch(key[0], texts, key[1], "single")

    def readiness(self) -> dict[str, object]:
        """Embedder loaded, index reachable, label count; blocking (Chroma round trip)."""
        checks: dict[str, object] = {"embedder": self._embedder is not None,
                                     "index": False, "labels": 0}
        if self.error:
            checks["error"] = self.error
        if self.pipeline is not None:
            with contextlib.suppress(Exception):
                checks["vectors"] = self.pipeline.index.vector_count()
                checks["index"] = True
            count = len(self.pipeline.index.labels)
            checks["labels"] = count
            self.metrics.labels.set(count)
            self.metrics.dead_slots.set(self.pipeline.index.dead_slots())
        checks["ready"] = bool(checks["embedder"] and checks["index"] and checks["labels"])
        self.metrics.ready.set(int(bool(checks["ready"])))
        if self.pipeline is not None and self.pipeline.selector is not None:
            checks["llm"] = self._llm_check()
        return checks

    def _llm_check(self) -> dict[str, object]:
        """The LLM circuit, as detail: retrieval still answers while the LLM is down."""
        selector = self.pipeline.selector if self.pipeline else None
        breaker = selector.breaker if isinstance(selector, LLMSelector) else None
        if breaker is None:
            self.metrics.llm_circuit.state("off")
            return {"circuit": "off", "degraded": False}
        detail = breaker.describe()
        state = str(detail.pop("state"))
        self.metrics.llm_circuit.state(state)
        self.metrics.llm_circuit_opens.set(breaker.opens)
        return {"circuit": state, "degraded": state != "closed", **detail}
