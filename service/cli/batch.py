"""`labelrank batch`: label a whole file, resumable; or prepare and collect OpenAI Batch files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer

from service.batch.io import InputFormat
from service.cli.common import DbOpt, ModeOpt, parse_mode, settings_from


def batch(
    input_path: Annotated[str, typer.Argument(metavar="INPUT",
                                              help="JSONL or CSV file, or - for stdin.")],
    output: Annotated[Path, typer.Argument(
        metavar="OUTPUT", help="JSONL output: appended to, resumed on rerun.")],
    results: Annotated[list[Path] | None, typer.Argument(
        metavar="RESULTS", help="Provider results (and error) files, for --openai-batch collect.")]
    = None,
    db: DbOpt = None,
    mode: ModeOpt = "auto",
    concurrency: Annotated[int | None, typer.Option(min=1, help="Concurrent LLM requests.")]
    = None,
    text_field: Annotated[str, typer.Option(help="Field or column holding the text.")] = "text",
    id_field: Annotated[str, typer.Option(help="Field or column holding the id.")] = "id",
    input_format: Annotated[str, typer.Option(help="auto | jsonl | csv")] = "auto",
    chunk_size: Annotated[int | None, typer.Option(min=1, help="Texts per pipeline call.")]
    = None,
    candidates: Annotated[bool, typer.Option(help="Keep the candidates in each record.")] = True,
    force: Annotated[bool, typer.Option("--force", "--continue-anyway", help=(
        "Continue although OUTPUT was written with another index or settings."))] = False,
    openai_batch: Annotated[str | None, typer.Option(help="prepare | collect")] = None,
) -> None:
    """Label a whole file: one JSONL record per input record, in order, resumable."""
    from service.batch.openai_files import BATCH_DISCOUNT, collect, prepare
    from service.batch.report import summary
    from service.batch.run import BatchOptions, run_batch
    from service.engine import open_engine

    if input_format not in ("auto", "jsonl", "csv"):
        raise typer.BadParameter(f"--input-format must be auto, jsonl or csv, not {input_format!r}")
    if openai_batch not in (None, "prepare", "collect") or bool(results) != (
            openai_batch == "collect"):
        raise typer.BadParameter("use --openai-batch prepare, or --openai-batch collect "
                                 "RESULTS.jsonl...; results files go with collect only")
    engine = open_engine(settings_from(db, llm_concurrency=concurrency))
    settings = engine.settings
    options = BatchOptions(mode=parse_mode(mode), text_field=text_field, id_field=id_field,
                           input_format=cast(InputFormat, input_format), chunk_size=chunk_size,
                           candidates=candidates, force=force)
    if openai_batch == "prepare":
        done = prepare(engine, input_path, output, options)
        typer.echo(f"prepared {done['requests']} requests for {done['items']} records "
                   f"({done['errors']} input errors) in {done['directory']}:", err=True)
        for path in done["files"]:
            typer.echo(f"  {path}", err=True)
        typer.echo("upload each with purpose=batch, create batches for /v1/chat/completions, "
                   "then: labelrank batch INPUT OUTPUT --openai-batch collect RESULTS.jsonl",
                   err=True)
        return
    if openai_batch == "collect":
        stats, bad = collect(engine, output, results or [], options)
        if bad:
            typer.echo(f"warning: {bad} unreadable lines in the results files", err=True)
        typer.echo(summary(stats, settings.llm_model, settings.llm_prices, BATCH_DISCOUNT),
                   err=True)
        return
    try:
        stats = run_batch(engine, input_path, output, options)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {output} holds every finished record; run the same "
                   "command again to resume", err=True)
        raise typer.Exit(130) from None
    typer.echo(summary(stats, settings.llm_model, settings.llm_prices), err=True)




def register(app: typer.Typer) -> None:
    """Add `batch` to the command tree."""
    app.command()(batch)
