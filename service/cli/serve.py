"""`labelrank serve`: the HTTP API and the web console under uvicorn, refused while the
configuration has errors."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service.cli.common import DbOpt, settings_from
from service.settings import Settings, get_settings

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI

Pages = Callable[[Path], "Sequence[APIRouter]"]
"""Routes a higher layer adds to the console (eval's Runs pages), given the `--runs` directory."""

# How `serve --workers N` tells its worker processes what the parent was given.
PAGES_ENV, RUNS_ENV = "LABELRANK_SERVE_PAGES", "LABELRANK_SERVE_RUNS"


def serve(
    ctx: typer.Context,
    db: DbOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help=(
        "Worker processes; more than 1 needs a Chroma server (LABELRANK_CHROMA_HOST)."))] = 1,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Serve although `labelrank doctor config` finds errors.")] = False,
    runs: Annotated[Path, typer.Option(
        help="Directory of eval run files for the console's Runs pages.")] = Path("eval/runs"),
) -> None:
    """Serve the HTTP API (/v1, docs at /docs) and the web console (/) with uvicorn."""
    import uvicorn

    from service.cli.config_check import check_config, check_index
    from service.cli.doctor import report

    pages: Pages | None = ctx.obj
    settings = settings_from(db)
    if report(check_config(settings, host) + check_index(settings)) and not insecure:
        typer.echo("refusing to serve: fix the errors above (labelrank doctor config), or "
                   "pass --insecure", err=True)
        raise typer.Exit(2)
    if workers == 1:
        uvicorn.run(build_app(settings, runs, pages), host=host, port=port)
        return
    if settings.chroma_host is None:
        raise typer.BadParameter("an embedded index must have one writer process: use "
                                 "--workers 1, or a Chroma server via LABELRANK_CHROMA_HOST",
                                 param_hint="--workers")
    if db is not None:
        os.environ["LABELRANK_DB"] = str(db)  # worker processes build their own settings
    os.environ[RUNS_ENV] = str(runs.resolve())
    if pages is not None:
        os.environ[PAGES_ENV] = f"{pages.__module__}:{pages.__qualname__}"
    uvicorn.run("service.cli.serve:worker_app", factory=True, host=host, port=port,
                workers=workers)


def build_app(settings: Settings, runs: Path, pages: Pages | None = None) -> FastAPI:
    """The API with the console, and the pages a higher layer adds."""
    from service.api.app import create_app
    from service.console.pages import console_router

    return create_app(settings, extra_routers=[console_router(),
                                               *(pages(runs) if pages else ())])


def worker_app() -> FastAPI:
    """The app of each `serve --workers N` process, built from what the parent left in env."""
    pages = None
    if ref := os.environ.get(PAGES_ENV):
        module, _, name = ref.partition(":")
        pages = getattr(importlib.import_module(module), name)
    return build_app(get_settings(), Path(os.environ.get(RUNS_ENV, "eval/runs")), pages)


def register(app: typer.Typer, pages: Pages | None = None) -> None:
    """Add `serve` to the command tree; `pages` come from a higher layer (eval's Runs)."""
    app.command(context_settings={"obj": pages})(serve)
