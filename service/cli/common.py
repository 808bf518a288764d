"""What every command shares: the error-reporting group, common options, settings from flags."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, cast

import click
import typer
from typer.core import TyperGroup

from retrieval.errors import LabelrankError
from service.pipeline import Mode
from service.settings import Settings, get_settings

DbOpt = Annotated[Path | None, typer.Option("--db", help="Index directory (embedded Chroma).")]
ModeOpt = Annotated[str, typer.Option("--mode", help="auto | llm | retrieval")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Candidates per text.")]
MaxLabelsOpt = Annotated[int | None, typer.Option("--max-labels", help="Labels per text.")]


class ErrorReportingGroup(TyperGroup):
    """A command group that prints any labelrank error as one line and exits 2, no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a LabelrankError becomes `error [code]: message` on stderr."""
        try:
            return super().invoke(ctx)
        except LabelrankError as exc:
            click.echo(f"error [{exc.code}]: {exc.message}", err=True)
            sys.exit(2)


def settings_from(db: Path | None = None, **overrides: object) -> Settings:
    """Settings from env/.env with CLI flags on top."""
    return get_settings(db=db, **overrides)


def parse_mode(mode: str) -> Mode:
    """The `--mode` value, or a usage error naming the choices."""
    if mode not in ("auto", "llm", "retrieval"):
        raise typer.BadParameter(f"--mode must be auto, llm or retrieval, not {mode!r}")
    return cast(Mode, mode)
