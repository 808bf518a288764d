"""The console's Runs pages: the run files of one directory, one run, two runs side by side."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from eval.run_views import chart, compare_view, run_view, summary
from retrieval.errors import LabelrankError
from service.api.auth import require_read
from service.console.templating import page, render

TEMPLATES = Path(__file__).parent / "templates"
RUN_NAME = re.compile(r"^[\w.@+-]+$")
RunName = Annotated[str, Query(min_length=1, max_length=200)]


class UnknownRunError(LabelrankError):
    code = "unknown_run"
    status = 404


@lru_cache(maxsize=32)
def _load(path: Path, mtime_ns: int, size: int) -> dict:
    # Keyed by mtime and size: a run file rewritten in place is read again.
    return json.loads(path.read_text(encoding="utf-8"))


class RunFiles:
    """The run files (`*.json`) directly in one directory, by file stem."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def names(self) -> list[str]:
        """Stems of the run files, newest first."""
        if not self.directory.is_dir():
            return []
        files = [p for p in self.directory.glob("*.json") if p.is_file()]
        return [p.stem for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]

    def load(self, name: str) -> dict:
        """One run; UnknownRunError for a name that is not a run file here."""
        path = self.directory / f"{name}.json"
        if not RUN_NAME.match(name) or not path.is_file():
            raise UnknownRunError(f"no run file {name!r} in {self.directory}", run=name)
        stat = path.stat()
        try:
            run = _load(path, stat.st_mtime_ns, stat.st_size)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UnknownRunError(f"{path} is not a run file: {exc}", run=name) from None
        if not isinstance(run, dict) or not {"metrics", "predictions"} <= set(run):
            raise UnknownRunError(f"{path} is not a run file (no metrics or predictions)",
                                  run=name)
        return run

    def summaries(self) -> list[dict]:
        """A row per run file, unreadable ones with their error."""
        rows = []
        for name in self.names():
            try:
                rows.append(summary(name, self.load(name)))
            except UnknownRunError as exc:
                rows.append({"name": name, "error": exc.message})
        return rows


def runs_routers(directory: Path) -> list[APIRouter]:
    """The Runs pages over `directory`: shells anyone may load, fragments behind the read key."""
    files = RunFiles(directory)
    extra = (TEMPLATES,)
    shells = APIRouter(include_in_schema=False)
    fragments = APIRouter(dependencies=[Depends(require_read)], include_in_schema=False)

    @shells.get("/runs", response_class=HTMLResponse)
    async def runs_page(request: Request) -> Any:
        """The run files, two of them to compare."""
        return page(request, "shell.html", heading="Runs", fragment="/console/runs")

    @shells.get("/runs/compare", response_class=HTMLResponse)
    async def compare_page(request: Request, a: RunName, b: RunName) -> Any:
        """Two runs side by side."""
        return page(request, "shell.html", heading="Compare runs",
                    fragment=f"/console/runs/compare?{request.url.query}")

    @shells.get("/runs/{name}", response_class=HTMLResponse)
    async def run_page(request: Request, name: str) -> Any:
        """One run."""
        return page(request, "shell.html", heading="Run",
                    fragment=f"/console/runs/{quote(name)}")

    @fragments.get("/console/runs", response_class=HTMLResponse)
    async def list_runs() -> Any:
        """The run list with the compare form."""
        rows = await anyio.to_thread.run_sync(files.summaries)
        return HTMLResponse(render("_runs_list.html", extra, rows=rows,
                                   directory=str(directory)))

    @fragments.get("/console/runs/compare", response_class=HTMLResponse)
    async def compare(a: RunName, b: RunName) -> Any:
        """Metric deltas, settings that differ, flipped texts."""
        def build() -> str:
            view = compare_view(a, files.load(a), b, files.load(b))
            return render("_compare.html", extra, view=view, chart=chart(view["curves"]),
                          standalone=False)

        return HTMLResponse(await anyio.to_thread.run_sync(build))

    @fragments.get("/console/runs/{name}", response_class=HTMLResponse)
    async def one_run(name: str) -> Any:
        """Metrics, recall@K curve and the per-label table of one run."""
        def build() -> str:
            view = run_view(name, files.load(name))
            return render("_run.html", extra, view=view, chart=chart([view["curve"]]),
                          standalone=False)

        return HTMLResponse(await anyio.to_thread.run_sync(build))

    return [shells, fragments]
