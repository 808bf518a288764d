"""`labelrank doctor`: checks that find problems before they reach users."""

from __future__ import annotations

from typing import Annotated

import typer

from service.cli.common import DbOpt, settings_from
from service.cli.config_check import Finding, check_config, check_index


def report(findings: list[Finding]) -> int:
    """Print findings one per line on stderr; the exit status: 1 when any is an error."""
    for finding in findings:
        typer.echo(finding.line(), err=True)
    return 1 if any(f.severity == "error" for f in findings) else 0


def doctor_config(
    host: Annotated[str, typer.Option(help="The address `labelrank serve` will bind.")]
    = "127.0.0.1",
    db: DbOpt = None,
    index: Annotated[bool, typer.Option(help="Also open the index and check its embedder.")]
    = True,
) -> None:
    """Report misconfiguration (keys, bind address, Chroma host, LLM endpoint, index);
    exit 1 on any error."""
    settings = settings_from(db)
    findings = check_config(settings, host) + (check_index(settings) if index else [])
    status = report(findings)
    if not findings:
        typer.echo("config: no problems found", err=True)
    raise typer.Exit(status)


def register(doctor: typer.Typer) -> None:
    """Add `config` to the `doctor` group."""
    doctor.command("config")(doctor_config)
