"""`labelrank serve`: the HTTP API under uvicorn, refused while the configuration has errors."""

from __future__ import annotations

from typing import Annotated

import typer

from service.cli.common import DbOpt, settings_from


def serve(
    db: DbOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help=(
        "Worker processes; more than 1 needs a Chroma server (LABELRANK_CHROMA_HOST)."))] = 1,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Serve although `labelrank doctor config` finds errors.")] = False,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs) with uvicorn."""
    import os

    import uvicorn

    from service.cli.doctor import report
    from service.config_check import check_config, check_index

    settings = settings_from(db)
    if report(check_config(settings, host) + check_index(settings)) and not insecure:
        typer.echo("refusing to serve: fix the errors above (labelrank doctor config), or "
                   "pass --insecure", err=True)
        raise typer.Exit(2)
    if workers == 1:
        from service.api.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port)
        return
    if settings.chroma_host is None:
        raise typer.BadParameter("an embedded index must have one writer process: use "
                                 "--workers 1, or a Chroma server via LABELRANK_CHROMA_HOST",
                                 param_hint="--workers")
    if db is not None:
        os.environ["LABELRANK_DB"] = str(db)  # worker processes build their own settings
    uvicorn.run("service.api.app:create_app", factory=True, host=host, port=port,
                workers=workers)


def register(app: typer.Typer) -> None:
    """Add `serve` to the command tree."""
    app.command()(serve)
