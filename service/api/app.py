"""The HTTP API: thin routes over the one pipeline, built once in the app's lifespan.

Run it with `labelrank serve`, or `uvicorn service.api.app:create_app --factory`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from retrieval.embedder import Embedder
from service.api.body_limit import BodyLimit
from service.api.errors import install_error_handlers
from service.api.prometheus import Metrics, RequestMetrics
from service.api.routes import health, read, write
from service.api.state import ServiceState
from service.settings import Settings, get_settings


def create_app(settings: Settings | None = None,
               load_embedder: Callable[[], Embedder] | None = None) -> FastAPI:
    """The app; the embedder, index and pipeline load in the background once it starts."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState(settings, metrics, load_embedder)
        state.claim_directory()
        app.state.labelrank = state
        for batcher in state.batchers.values():
            batcher.start()
        # Loading takes seconds: serve /healthz and a 503 /readyz meanwhile.
        loading = asyncio.create_task(anyio.to_thread.run_sync(state.load))
        try:
            yield
        finally:
            for batcher in state.batchers.values():
                await batcher.stop()
            await loading
            state.close()

    app = FastAPI(title="labelrank", version="0.1.0", lifespan=lifespan,
                  description="Tag texts with labels from a very large catalog. "
                              "Errors are `{\"error\": {\"code\", \"message\", ...}}`.")
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: it counts the 413s too
    install_error_handlers(app)
    for router in (read, write, health):
        app.include_router(router)
    return app
