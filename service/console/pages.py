"""The console's pages: shells without data (they load it with the reader's key), and files."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.console import label_views, playground
from service.console.templating import STATIC, page

# No auth here: a shell holds no data; every fragment it loads needs the key.
shells = APIRouter(include_in_schema=False)


@shells.get("/", response_class=HTMLResponse)
async def playground_page(request: Request) -> Any:
    """Texts in, answers explained."""
    return page(request, "playground.html")


@shells.get("/labels", response_class=HTMLResponse)
async def labels_page(request: Request,
                      open_id: Annotated[str | None, Query(alias="id", max_length=256)] = None
                      ) -> Any:
    """Search, browse and edit the catalog; `?id=` opens one label."""
    return page(request, "labels.html", open_id=open_id)


def console_router() -> APIRouter:
    """Every route of the console (pages, fragments, its static files), to include in the app."""
    router = APIRouter(include_in_schema=False)
    for part in (shells, playground.router, label_views.router):
        router.include_router(part)
    router.mount("/static/console", StaticFiles(directory=STATIC), name="console-static")
    return router
