"""`labelrank index` and `labelrank info`: build an index from a catalog, show what it holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import DbOpt, settings_from

SHOWN_SKIPPED = 10


def index(
    catalog: Annotated[Path, typer.Argument(help="Catalog, JSONL or CSV.")],
    examples: Annotated[list[Path] | None, typer.Option(
        "--examples", "-e", help="Labeled JSONL/CSV whose texts become examples.")] = None,
    db: DbOpt = None,
    prune: Annotated[bool, typer.Option(help="Remove labels that are not in the catalog.")] = True,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Stop on a bad example row instead of skipping it.")] = False,
) -> None:
    """Build or update the index from a catalog (only what changed is re-embedded), train the
    learned head on the labels' examples (LABELRANK_HEAD_TRAIN=false: off), then let the
    catalog calibrate the retrieval settings (LABELRANK_SELF_CALIBRATION_TEXTS=0: off)."""
    from retrieval.calibration.work import embedding_cost
    from retrieval.catalog import SkippedRow
    from service.factory import build_index
    from service.jobs.indexing import build_or_update, train_head
    from service.jobs.self_calibration import calibrate_after_index
    from service.locking import writing

    settings = settings_from(db)
    skipped: list[SkippedRow] | None = None if strict else []
    report, seconds = build_or_update(settings, catalog, examples or [], prune=prune,
                                      skipped=skipped)
    rate = report.vectors_added / seconds if seconds else 0.0
    typer.echo(
        f"labels: +{report.labels_added} ~{report.labels_updated} -{report.labels_removed} "
        f"={report.labels_unchanged}; vectors: +{report.vectors_added} -{report.vectors_removed}"
        f" (total {report.vectors_total}); {seconds:.1f} s, {rate:.0f} texts/s", err=True)
    if report.examples_left_out:
        typer.echo(f"examples left out (not pivots): {report.examples_left_out}", err=True)
    if skipped:
        shown = "".join(f"\n  {row}" for row in skipped[:SHOWN_SKIPPED])
        more = f"\n  ... and {len(skipped) - SHOWN_SKIPPED} more" \
            if len(skipped) > SHOWN_SKIPPED else ""
        typer.echo(f"example rows skipped: {len(skipped)} (--strict stops on them){shown}{more}",
                   err=True)
    with writing(settings, "index"):  # both save with the index: one writer, as indexing
        index = build_index(settings)
        # Before calibration, so that calibration weighs the head.
        typer.echo(train_head(settings, index), err=True)
        line, _ = calibrate_after_index(
            settings, index, seconds, embedding_cost(report.vectors_added, report.chars_added))
    typer.echo(line, err=True)


def info(db: DbOpt = None) -> None:
    """Show what an index holds and the retrieval settings in effect (calibration included)."""
    from service.engine import open_engine

    typer.echo(json.dumps(open_engine(settings_from(db)).describe(), indent=2))


def register(app: typer.Typer) -> None:
    """Add `index` and `info` to the command tree."""
    app.command()(index)
    app.command()(info)
