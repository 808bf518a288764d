"""The HTTP API: thin routes over the one pipeline, built once in the app's lifespan.

Run it with `labelrank serve` (the API and the web console), or
`uvicorn service.api.app:create_app --factory` (the API alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from retrieval.embedder import Embedder
from service.api.body_limit import BodyLimit
from service.api.errors import install_error_handlers
from service.api.prometheus import Metrics, RequestMetrics
from service.api.routes import health, read, write
from service.api.state import ServiceState
from service.settings import Settings, get_settings


def create_app(settings: Settings | None = None,
               load_embedder: Callable[[], Embedder] | None = None,
               extra_routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The app; the embedder, index and pipeline load in the background once it starts.

    `extra_routers` come from the layers above the API (the web console and eval's run pages);
    the API itself knows none of them.
    """
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

    # /docs and /redoc load Swagger UI and ReDoc from this package's copy, not a CDN: the
    # product runs offline.
    app = FastAPIOffline(title="labelrank", version="0.1.0", lifespan=lifespan,
                         static_url="/static/docs",
                         description="Tag texts with labels from a very large catalog. "
                                     "Errors are `{\"error\": {\"code\", \"message\", ...}}`.")
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: it counts the 413s too
    install_error_handlers(app)
    for router in (read, write, health, *extra_routers):
        app.include_router(router)
    return app
