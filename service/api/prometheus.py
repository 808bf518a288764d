"""Prometheus metrics of one app: HTTP requests per route, results, LLM calls and tokens."""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.results import ClassifyResult, Outcome

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    """All metrics in a registry of their own, so several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("labelrank_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("labelrank_http_request_duration_seconds",
                                 "HTTP request latency by route", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.results = Counter("labelrank_results", "Classification results by path",
                               ["mode", "degraded"], registry=r)
        self.degraded = Counter("labelrank_degraded_results", "Degraded results by reason",
                                ["reason"], registry=r)
        self.item_errors = Counter("labelrank_item_errors", "Texts refused, by error code",
                                   ["code"], registry=r)
        self.llm_calls = Counter("labelrank_llm_calls", "LLM requests made (retries included)",
                                 registry=r)
        self.llm_tokens = Counter("labelrank_llm_tokens", "LLM tokens spent", ["kind"],
                                  registry=r)
        self.dropped_ids = Counter("labelrank_llm_dropped_ids",
                                   "Ids the LLM answered that were not candidates", registry=r)
        self.batch_size = Histogram("labelrank_pipeline_batch_size",
                                    "Texts per pipeline call", ["source"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.label_writes = Counter("labelrank_label_writes", "Label changes through the API",
                                    ["op"], registry=r)
        self.feedback = Counter("labelrank_feedback_labels", "Labels confirmed or rejected",
                                ["kind"], registry=r)
        self.labels = Gauge("labelrank_labels", "Labels in the index", registry=r)
        self.dead_slots = Gauge("labelrank_index_dead_slots",
                                "Graph slots of deleted or replaced vectors and label records, "
                                "held until the next compaction", registry=r)
        self.compactions = Counter("labelrank_index_compactions",
                                   "Index compactions (rebuilds without dead slots)", registry=r)
        self.compaction_seconds = Histogram("labelrank_index_compaction_seconds",
                                            "Time to compact the index",
                                            buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
                                            registry=r)
        self.ready = Gauge("labelrank_ready", "1 when the service is ready", registry=r)
        self.llm_circuit = Enum("labelrank_llm_circuit",
                                "LLM endpoint circuit breaker: closed, open (calls refused, "
                                "results degrade to retrieval) or half_open (one trial call)",
                                states=["closed", "open", "half_open", "off"], registry=r)
        self.llm_circuit_opens = Gauge("labelrank_llm_circuit_opens",
                                       "Times the LLM circuit breaker has opened", registry=r)

    def observe(self, outcomes: Sequence[Outcome], source: str) -> None:
        """Count the results of one pipeline call."""
        self.batch_size.labels(source).observe(len(outcomes))
        for outcome in outcomes:
            if not isinstance(outcome, ClassifyResult):
                self.item_errors.labels(str(outcome.error.get("code"))).inc()
                continue
            self.results.labels(outcome.mode, str(outcome.degraded).lower()).inc()
            if outcome.degraded:
                self.degraded.labels(outcome.reason or "unknown").inc()
            self.llm_calls.inc(outcome.llm_attempts)
            self.llm_tokens.labels("prompt").inc(outcome.usage.prompt_tokens)
            self.llm_tokens.labels("completion").inc(outcome.usage.completion_tokens)
            self.dropped_ids.inc(len(outcome.dropped_ids))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: count and time every HTTP request under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "other"  # bounded labels
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
