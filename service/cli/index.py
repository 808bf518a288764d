"""`labelrank index` and `labelrank info`: build an index from a catalog, show what it holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import DbOpt, settings_from


def index(
    catalog: Annotated[Path, typer.Argument(help="Catalog, JSONL or CSV.")],
    examples: Annotated[list[Path] | None, typer.Option(
        "--examples", "-e", help="Labeled JSONL/CSV whose texts become examples.")] = None,
    db: DbOpt = None,
    prune: Annotated[bool, typer.Option(help="Remove labels that are not in the catalog.")] = True,
) -> None:
    """Build or update the index from a catalog (only what changed is re-embedded)."""
    from service.indexing import build_or_update

    report, seconds = build_or_update(settings_from(db), catalog, examples or [], prune=prune)
    rate = report.vectors_added / seconds if seconds else 0.0
    typer.echo(
        f"labels: +{report.labels_added} ~{report.labels_updated} -{report.labels_removed} "
        f"={report.labels_unchanged}; vectors: +{report.vectors_added} -{report.vectors_removed}"
        f" (total {report.vectors_total}); {seconds:.1f} s, {rate:.0f} texts/s", err=True)
    if report.examples_left_out:
        typer.echo(f"examples left out (not pivots): {report.examples_left_out}", err=True)


def info(db: DbOpt = None) -> None:
    """Show what an index holds and the retrieval settings in effect (calibration included)."""
    from service.engine import open_engine

    engine = open_engine(settings_from(db))
    typer.echo(json.dumps(engine.describe(), indent=2))


def register(app: typer.Typer) -> None:
    """Add `index` and `info` to the command tree."""
    app.command()(index)
    app.command()(info)
