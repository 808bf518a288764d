"""`labelrank batch`: label a whole file, resumable; or prepare and collect OpenAI Batch files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from service.batch.io import InputFormat
from service.cli.common import DbOpt, ModeOpt, parse_mode, settings_from

if TYPE_CHECKING:
    from service.batch.ray_run import RayOptions
    from service.batch.run import BatchOptions
    from service.engine import Engine


def batch(
    input_path: Annotated[str, typer.Argument(metavar="INPUT",
                                              help="JSONL, CSV or Parquet file, or - for stdin.")],
    output: Annotated[Path, typer.Argument(
        metavar="OUTPUT", help=(
            "JSONL output: appended to, resumed on rerun; named .parquet: Parquet, written at "
            "the end from OUTPUT.partial.jsonl, which a rerun resumes."))],
    results: Annotated[list[Path] | None, typer.Argument(
        metavar="RESULTS", help="Provider results (and error) files, for --openai-batch collect.")]
    = None,
    db: DbOpt = None,
    mode: ModeOpt = "auto",
    concurrency: Annotated[int | None, typer.Option(min=1, help="Concurrent LLM requests.")]
    = None,
    text_field: Annotated[str, typer.Option(help="Field or column holding the text.")] = "text",
    id_field: Annotated[str, typer.Option(help="Field or column holding the id.")] = "id",
    input_format: Annotated[str, typer.Option(help=(
        "auto (by the name: .parquet/.pq, .csv, else JSONL) | jsonl | csv | parquet"))] = "auto",
    chunk_size: Annotated[int | None, typer.Option(min=1, help="Texts per pipeline call.")]
    = None,
    candidates: Annotated[bool, typer.Option(help="Keep the candidates in each record.")] = True,
    force: Annotated[bool, typer.Option("--force", "--continue-anyway", help=(
        "Continue although OUTPUT was written with another index or settings."))] = False,
    openai_batch: Annotated[str | None, typer.Option(help="prepare | collect")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help=(
        "Ask the LLM again even where the same request was answered before (the answer "
        "cache in .labelrank-cache/, shared with eval and, with --engine ray, by every "
        "worker)."))] = False,
    engine_name: Annotated[str, typer.Option("--engine", help=(
        "local (one process) | ray (shards on Ray workers; INPUT a file or a directory, "
        "OUTPUT a directory)"))] = "local",
    address: Annotated[str | None, typer.Option(help=(
        "Ray cluster address (auto: the running one); default RAY_ADDRESS, else a local Ray."))]
    = None,
    workers: Annotated[int | None, typer.Option(min=1, help=(
        "Ray workers (default: the cluster's CPUs / --cpus-per-worker)."))] = None,
    cpus_per_worker: Annotated[int, typer.Option(min=1, help=(
        "CPUs (and embedder threads) per Ray worker."))] = 1,
    shard_size: Annotated[int, typer.Option(min=1, help=(
        "Input lines per shard (a CSV file is one shard)."))] = 10_000,
    merge: Annotated[Path | None, typer.Option(help=(
        "With --engine ray: also write every record to this one file, in input order "
        "(Parquet when named .parquet)."))]
    = None,
    chroma_host: Annotated[str | None, typer.Option(help=(
        "Chroma server host instead of --db (LABELRANK_CHROMA_HOST)."))] = None,
    worker_niceness: Annotated[int | None, typer.Option(min=-20, max=19, help=(
        "Niceness of the Ray workers. Ray starts them at 15, so they run slowly while anything "
        "else uses the cores; 0 runs them as the driver runs. Applied by the Ray this run "
        "starts; on a joined cluster a worker can only raise its own (set "
        "RAY_worker_niceness=0 before `ray start` to lower it there)."))] = None,
) -> None:
    """Label a whole file: one JSONL record per input record, in order, resumable."""
    from prompts.answer_cache import CACHE_DIR
    from service.batch.ray_run import RayOptions
    from service.batch.run import BatchOptions
    from service.engine import open_engine

    _check(input_format, openai_batch, results, engine_name, output,
           {"--address": address, "--workers": workers, "--merge": merge,
            "--cpus-per-worker": cpus_per_worker != 1, "--shard-size": shard_size != 10_000,
            "--worker-niceness": worker_niceness is not None})
    engine = open_engine(settings_from(db, llm_concurrency=concurrency, chroma_host=chroma_host))
    options = BatchOptions(mode=parse_mode(mode), text_field=text_field, id_field=id_field,
                           input_format=cast(InputFormat, input_format), chunk_size=chunk_size,
                           candidates=candidates, force=force,
                           cache_dir=None if no_cache else CACHE_DIR)
    if openai_batch == "prepare":
        _prepare(engine, input_path, output, options)
    elif openai_batch == "collect":
        _collect(engine, output, results or [], options)
    elif engine_name == "ray":
        _run_on_ray(engine, input_path, output, options, merge,
                    RayOptions(address, workers, cpus_per_worker, shard_size,
                               worker_niceness=worker_niceness))
    else:
        _run_local(engine, input_path, output, options)


def _check(input_format: str, openai_batch: str | None, results: list[Path] | None,
           engine_name: str, output: Path, ray_only: dict[str, object]) -> None:
    """Refuse options that do not go together, before anything is opened."""
    if input_format not in ("auto", "jsonl", "csv", "parquet"):
        raise typer.BadParameter("--input-format must be auto, jsonl, csv or parquet, not "
                                 f"{input_format!r}")
    if openai_batch not in (None, "prepare", "collect") or bool(results) != (
            openai_batch == "collect"):
        raise typer.BadParameter("use --openai-batch prepare, or --openai-batch collect "
                                 "RESULTS.jsonl...; results files go with collect only")
    if engine_name not in ("local", "ray"):
        raise typer.BadParameter(f"--engine must be local or ray, not {engine_name!r}")
    if engine_name == "local" and any(ray_only.values()):
        raise typer.BadParameter(", ".join(k for k, v in ray_only.items() if v)
                                 + " go with --engine ray")
    if engine_name == "ray" and openai_batch:
        raise typer.BadParameter("--openai-batch runs with the local engine")
    if output.suffix.lower() in (".parquet", ".pq") and (openai_batch or engine_name == "ray"):
        raise typer.BadParameter(
            "OUTPUT is a directory with --engine ray (--merge OUT.parquet writes Parquet)"
            if engine_name == "ray" else "--openai-batch writes JSONL: name OUTPUT .jsonl")


def _prepare(engine: Engine, source: str, output: Path, options: BatchOptions) -> None:
    """OpenAI Batch API request files for the whole input, and what to do with them."""
    from service.batch.openai_files import prepare

    done = prepare(engine, source, output, options)
    typer.echo(f"prepared {done['requests']} requests for {done['items']} records "
               f"({done['errors']} input errors) in {done['directory']}:", err=True)
    for path in done["files"]:
        typer.echo(f"  {path}", err=True)
    typer.echo("upload each with purpose=batch, create batches for /v1/chat/completions, "
               "then: labelrank batch INPUT OUTPUT --openai-batch collect RESULTS.jsonl",
               err=True)


def _collect(engine: Engine, output: Path, results: list[Path], options: BatchOptions) -> None:
    """The provider's answers into OUTPUT, and the run's summary at the batch price."""
    from service.batch.openai_files import BATCH_DISCOUNT, collect
    from service.batch.report import summary

    stats, bad = collect(engine, output, results, options)
    if bad:
        typer.echo(f"warning: {bad} unreadable lines in the results files", err=True)
    settings = engine.settings
    typer.echo(summary(stats, settings.llm_model, settings.llm_prices, BATCH_DISCOUNT), err=True)


def _run_local(engine: Engine, source: str, output: Path, options: BatchOptions) -> None:
    """The run in this process, and its summary; interrupted, it says how to resume."""
    from service.batch.report import summary
    from service.batch.run import run_batch

    try:
        stats = run_batch(engine, source, output, options)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {output} holds every finished record; run the same "
                   "command again to resume", err=True)
        raise typer.Exit(130) from None
    typer.echo(summary(stats, engine.settings.llm_model, engine.settings.llm_prices), err=True)


def _run_on_ray(engine: Engine, source: str, output: Path, options: BatchOptions,
                merge: Path | None, ray_options: RayOptions) -> None:
    """The sharded run, its summary, and the merged file when asked."""
    from service.batch.merge import merge_parts
    from service.batch.ray_run import run_batch_ray
    from service.batch.report import summary

    settings = engine.settings
    try:
        run = run_batch_ray(engine, source, output, options, ray_options)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {output} keeps every finished record; run the same command "
                   "again to resume", err=True)
        raise typer.Exit(130) from None
    typer.echo(summary(run.stats, settings.llm_model, settings.llm_prices), err=True)
    if run.workers:
        rss = [f"{w['peak_rss_mb']:.0f}" for w in run.workers]
        nice = sorted({w["niceness"] for w in run.workers})
        workers, nodes = len(run.workers), len({w["host"] for w in run.workers})
        typer.echo(f"  ray: {workers} worker{'s' * (workers > 1)} on {nodes} "
                   f"node{'s' * (nodes > 1)}, started in {run.startup_s:.1f} s; peak RSS per "
                   f"worker: {', '.join(rss)} MB; niceness {', '.join(map(str, nice))}",
                   err=True)
    if merge is not None:
        repeated = merge_parts(output, merge)
        typer.echo(f"merged {run.stats.records} records into {merge}"
                   + (f" ({repeated} ids repeated across shards marked duplicate_id)"
                      if repeated else ""), err=True)


def register(app: typer.Typer) -> None:
    """Add `batch` to the command tree."""
    app.command()(batch)
