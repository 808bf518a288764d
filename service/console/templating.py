"""One Jinja environment for every page of the console and the static run report."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def number(value: object, digits: int = 3) -> str:
    """A metric or score for a table cell: fixed digits, '–' for none."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


@lru_cache(maxsize=4)
def environment(extra: Sequence[Path] = ()) -> jinja2.Environment:
    """Templates from `extra` directories first (a higher layer's pages), then the console's."""
    loader = jinja2.FileSystemLoader([*extra, TEMPLATES])
    env = jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["number"] = number
    return env


def render(name: str, extra: Sequence[Path] = (), **context: Any) -> str:
    """A template rendered to a string."""
    return environment(tuple(extra)).get_template(name).render(**context)


def page(request: Request, name: str, extra: Sequence[Path] = (), status: int = 200,
         **context: Any) -> HTMLResponse:
    """A template as an HTML response; `request.url.path` tells the nav which page is open."""
    return HTMLResponse(render(name, extra, here=request.url.path, **context),
                        status_code=status)
