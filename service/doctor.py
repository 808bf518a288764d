"""`labelrank doctor`: checks that find problems before they reach users."""

from __future__ import annotations

import typer

doctor_app = typer.Typer(no_args_is_help=True,
                         help="Find misconfiguration and catalog problems before serving.")
