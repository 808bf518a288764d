"""The `labelrank` command tree, assembled in one place: the top layer, which sees every other.

Each group lives in its own module and adds itself through `register`; nothing adds commands to
another module's app at import time. The console script and the tests run this one tree.
"""

from __future__ import annotations

import typer

from eval import commands as eval_commands
from eval import doctor_catalog
from eval.console_runs import runs_routers
from service.cli import batch, classify, doctor, fit, index, llm, serve, tune
from service.cli.common import ErrorReportingGroup


def build_app() -> typer.Typer:
    """Every `labelrank` command, in the order `--help` lists them."""
    app = typer.Typer(cls=ErrorReportingGroup, add_completion=False, no_args_is_help=True,
                      help="Tag text with labels from a very large catalog.")
    for group in (index, classify):
        group.register(app)
    serve.register(app, pages=runs_routers)  # the console's Runs pages read eval's run files
    for group in (batch, eval_commands, fit, tune, llm):
        group.register(app)
    checks = typer.Typer(no_args_is_help=True,
                         help="Find misconfiguration and catalog problems before serving.")
    doctor.register(checks)
    doctor_catalog.register(checks)
    app.add_typer(checks, name="doctor")
    return app


app = build_app()


def main() -> None:
    """Console entry point (`labelrank`)."""
    app()
