"""`labelrank doctor`: checks that find problems before they reach users."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service.config_check import Finding, check_config, check_index
from service.settings import get_settings

doctor_app = typer.Typer(no_args_is_help=True,
                         help="Find misconfiguration and catalog problems before serving.")


def report(findings: list[Finding]) -> int:
    """Print findings one per line on stderr; the exit status: 1 when any is an error."""
    for finding in findings:
        typer.echo(finding.line(), err=True)
    return 1 if any(f.severity == "error" for f in findings) else 0


@doctor_app.command("config")
def doctor_config(
    host: Annotated[str, typer.Option(help="The address `labelrank serve` will bind.")]
    = "127.0.0.1",
    db: Annotated[Path | None, typer.Option("--db", help="Index directory (embedded Chroma).")]
    = None,
    index: Annotated[bool, typer.Option(help="Also open the index and check its embedder.")]
    = True,
) -> None:
    """Report misconfiguration (keys, bind address, Chroma host, LLM endpoint, index);
    exit 1 on any error."""
    settings = get_settings(db=db)
    findings = check_config(settings, host) + (check_index(settings) if index else [])
    status = report(findings)
    if not findings:
        typer.echo("config: no problems found", err=True)
    raise typer.Exit(status)
