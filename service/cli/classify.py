"""`labelrank classify` and `labelrank demo`: texts in, one JSON line (or a summary) out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import DbOpt, MaxLabelsOpt, ModeOpt, TopKOpt, parse_mode, settings_from
from service.settings import Settings

DEMO_DIR = Path(__file__).parent.parent / "demo_data"


def classify(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts; none = one per stdin line.")]
    = None,
    db: DbOpt = None,
    mode: ModeOpt = "auto",
    top_k: TopKOpt = None,
    max_labels: MaxLabelsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Texts per pipeline batch (stdin).")] = 256,
    subtree: Annotated[str | None, typer.Option(
        help="Only labels at or below this label id.")] = None,
) -> None:
    """Classify texts: one JSON line per input text, in order."""
    from retrieval.iterables import chunks
    from service.engine import open_engine
    from service.pipeline import ClassifyOptions
    from service.results import ItemError

    pipeline = open_engine(settings_from(db)).pipeline
    options = ClassifyOptions(mode=parse_mode(mode), top_k=top_k, max_labels=max_labels,
                              subtree=subtree)
    source = texts if texts else (line.rstrip("\n") for line in sys.stdin)
    failed = 0
    for batch in chunks(source, batch_size):
        for outcome in pipeline.classify_batch(batch, options):
            failed += isinstance(outcome, ItemError)
            typer.echo(outcome.model_dump_json(exclude_none=True))
    if failed:
        raise typer.Exit(1)


def demo(
    db: DbOpt = None,
    mode: ModeOpt = "auto",
) -> None:
    """Index the bundled demo catalog and classify the demo texts."""
    from service.engine import open_engine
    from service.jobs.indexing import build_or_update
    from service.pipeline import ClassifyOptions
    from service.results import ClassifyResult

    # Beside the default index, whatever LABELRANK_DB says: the demo never touches a real one.
    settings = settings_from(db or Settings.model_fields["db"].default / "demo")
    report, seconds = build_or_update(settings, DEMO_DIR / "catalog.jsonl", [])
    typer.echo(f"demo index: {report.vectors_total} vectors for "
               f"{report.labels_added + report.labels_updated + report.labels_unchanged} labels"
               f" in {settings.db} ({seconds:.1f} s)\n")
    texts = [t for t in (DEMO_DIR / "texts.txt").read_text().splitlines() if t.strip()]
    pipeline = open_engine(settings).pipeline
    outcomes = pipeline.classify_batch(texts, ClassifyOptions(parse_mode(mode)))
    for text, outcome in zip(texts, outcomes, strict=True):
        assert isinstance(outcome, ClassifyResult)
        names = ", ".join(f"{lab.name} ({lab.similarity:.2f})" for lab in outcome.labels)
        typer.echo(f"{text}\n  -> {names or '(none: ' + str(outcome.reason) + ')'}"
                   f"   [{outcome.mode}{', degraded' if outcome.degraded else ''}]")


def register(app: typer.Typer) -> None:
    """Add `classify` and `demo` to the command tree."""
    app.command()(classify)
    app.command()(demo)
