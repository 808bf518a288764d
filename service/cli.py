"""The `labelrank` command line: parse input, call the pipeline, print output."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from retrieval.errors import LabelrankError
from service.settings import Settings, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Tag text with labels from a very large catalog.")

DbOpt = Annotated[Path | None, typer.Option("--db", help="Index directory (embedded Chroma).")]
ModeOpt = Annotated[str, typer.Option("--mode", help="auto | llm | retrieval")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Candidates per text.")]
MaxLabelsOpt = Annotated[int | None, typer.Option("--max-labels", help="Labels per text.")]
DEMO_DIR = Path(__file__).parent / "demo_data"


def settings_from(db: Path | None = None, **overrides: object) -> Settings:
    """Settings from env/.env with CLI flags on top."""
    return get_settings(db=db, **overrides)


@app.command()
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


@app.command()
def classify(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts; none = one per stdin line.")]
    = None,
    db: DbOpt = None,
    mode: ModeOpt = "auto",
    top_k: TopKOpt = None,
    max_labels: MaxLabelsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Texts per pipeline batch (stdin).")] = 256,
) -> None:
    """Classify texts: one JSON line per input text, in order."""
    from service.factory import build_pipeline
    from service.pipeline import ClassifyOptions
    from service.results import ItemError

    pipeline = build_pipeline(settings_from(db))
    options = ClassifyOptions(mode=_mode(mode), top_k=top_k, max_labels=max_labels)
    source = texts if texts else (line.rstrip("\n") for line in sys.stdin)
    failed = 0
    for batch in _batches(source, batch_size):
        for outcome in pipeline.classify_batch(batch, options):
            failed += isinstance(outcome, ItemError)
            typer.echo(outcome.model_dump_json(exclude_none=True))
    if failed:
        raise typer.Exit(1)


@app.command()
def demo(
    db: DbOpt = None,
    mode: ModeOpt = "auto",
) -> None:
    """Index the bundled demo catalog and classify the demo texts."""
    from service.factory import build_pipeline
    from service.indexing import build_or_update
    from service.pipeline import ClassifyOptions
    from service.results import ClassifyResult

    settings = settings_from(db or Path("labelrank-data/demo"))
    report, seconds = build_or_update(settings, DEMO_DIR / "catalog.jsonl", [])
    typer.echo(f"demo index: {report.vectors_total} vectors for "
               f"{report.labels_added + report.labels_updated + report.labels_unchanged} labels"
               f" in {settings.db} ({seconds:.1f} s)\n")
    texts = [t for t in (DEMO_DIR / "texts.txt").read_text().splitlines() if t.strip()]
    pipeline = build_pipeline(settings)
    for text, outcome in zip(texts, pipeline.classify_batch(texts, ClassifyOptions(_mode(mode))),
                             strict=True):
        assert isinstance(outcome, ClassifyResult)
        names = ", ".join(f"{lab.name} ({lab.similarity:.2f})" for lab in outcome.labels)
        typer.echo(f"{text}\n  -> {names or '(none: ' + str(outcome.reason) + ')'}"
                   f"   [{outcome.mode}{', degraded' if outcome.degraded else ''}]")


def _mode(mode: str):
    if mode not in ("auto", "llm", "retrieval"):
        raise typer.BadParameter(f"--mode must be auto, llm or retrieval, not {mode!r}")
    return mode


def _batches(items, size: int):
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def main() -> None:
    """Console entry point: one line on stderr for any labelrank error, no stack trace."""
    try:
        app()
    except LabelrankError as exc:
        typer.echo(f"error [{exc.code}]: {exc.message}", err=True)
        sys.exit(2)


