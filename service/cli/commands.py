"""The `labelrank` command line: parse input, call the pipeline, print output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from retrieval.errors import LabelrankError
from service.cli.doctor import doctor_app
from service.cli.tune import tune_command
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
    if report.examples_left_out:
        typer.echo(f"examples left out (not pivots): {report.examples_left_out}", err=True)


@app.command()
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
    from service.batch.run import chunks
    from service.factory import build_pipeline
    from service.pipeline import ClassifyOptions
    from service.results import ItemError

    pipeline = build_pipeline(settings_from(db))
    options = ClassifyOptions(mode=_mode(mode), top_k=top_k, max_labels=max_labels,
                              subtree=subtree)
    source = texts if texts else (line.rstrip("\n") for line in sys.stdin)
    failed = 0
    for batch in chunks(source, batch_size):
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


@app.command()
def info(db: DbOpt = None) -> None:
    """Show what an index holds and the retrieval settings in effect (calibration included)."""
    from service.factory import build_pipeline

    settings = settings_from(db)
    pipeline = build_pipeline(settings)
    index = pipeline.index
    calibration = index.calibration()
    assignable = sum(lab.assignable for lab in index.labels.values())
    typer.echo(json.dumps({
        "db": str(settings.chroma_host or settings.db), "index": index.fingerprint(),
        "embedder_backend": index.embedder.backend,
        "assignable_labels": assignable, "vectors": index.vector_count(),
        "retrieval": pipeline.retriever.describe(),  # type: ignore[attr-defined]
        "top_k": pipeline.top_k, "threshold": pipeline.threshold.__dict__,
        "calibration": calibration, "llm": pipeline.selector is not None,
    }, indent=2))


llm_app = typer.Typer(help="A local LLM engine for LLM mode without an API key.")
app.add_typer(llm_app, name="llm")
app.add_typer(doctor_app, name="doctor")
app.command("tune")(tune_command)


@llm_app.command("serve-local")
def serve_local(
    port: Annotated[int, typer.Option(help="Loopback port.")] = 8080,
) -> None:
    """Run llama.cpp's OpenAI-compatible server with the packaged Gemma 3 270M model."""
    import signal
    import time

    from prompts.local_llm import MODEL_ALIAS, LocalLLMServer

    # A plain `kill` must also stop the engine, not orphan it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = LocalLLMServer(port=port).start()
    typer.echo(f"llama.cpp is serving {MODEL_ALIAS} on {server.base_url}; point labelrank at it:\n"
               f"  export LABELRANK_LLM_BASE_URL={server.base_url} LABELRANK_LLM_API_KEY=local "
               f"LABELRANK_LLM_MODEL={MODEL_ALIAS} LABELRANK_LLM_MAX_ANSWER_TOKENS=64\n"
               "Ctrl-C stops it.", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _mode(mode: str):
    if mode not in ("auto", "llm", "retrieval"):
        raise typer.BadParameter(f"--mode must be auto, llm or retrieval, not {mode!r}")
    return mode


@app.command()
def serve(
    db: DbOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help=(
        "Worker processes; more than 1 needs a Chroma server (LABELRANK_CHROMA_HOST)."))] = 1,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Serve although `labelrank doctor config` finds errors.")] = False,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs) with uvicorn."""
    import os

    import uvicorn

    from service.cli.doctor import report
    from service.config_check import check_config, check_index

    settings = settings_from(db)
    if report(check_config(settings, host) + check_index(settings)) and not insecure:
        typer.echo("refusing to serve: fix the errors above (labelrank doctor config), or "
                   "pass --insecure", err=True)
        raise typer.Exit(2)
    if workers == 1:
        from service.api.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port)
        return
    if settings.chroma_host is None:
        raise typer.BadParameter("an embedded index must have one writer process: use "
                                 "--workers 1, or a Chroma server via LABELRANK_CHROMA_HOST",
                                 param_hint="--workers")
    if db is not None:
        os.environ["LABELRANK_DB"] = str(db)  # worker processes build their own settings
    uvicorn.run("service.api.app:create_app", factory=True, host=host, port=port, workers=workers)


@app.command()
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
    from service.factory import build_pipeline

    if input_format not in ("auto", "jsonl", "csv"):
        raise typer.BadParameter(f"--input-format must be auto, jsonl or csv, not {input_format!r}")
    if openai_batch not in (None, "prepare", "collect") or bool(results) != (
            openai_batch == "collect"):
        raise typer.BadParameter("use --openai-batch prepare, or --openai-batch collect "
                                 "RESULTS.jsonl...; results files go with collect only")
    settings = settings_from(db, llm_concurrency=concurrency)
    pipeline = build_pipeline(settings)
    options = BatchOptions(mode=_mode(mode), text_field=text_field, id_field=id_field,
                           input_format=input_format, chunk_size=chunk_size,  # type: ignore[arg-type]
                           candidates=candidates, force=force)
    if openai_batch == "prepare":
        done = prepare(pipeline, settings, input_path, output, options)
        typer.echo(f"prepared {done['requests']} requests for {done['items']} records "
                   f"({done['errors']} input errors) in {done['directory']}:", err=True)
        for path in done["files"]:  # type: ignore[attr-defined]
            typer.echo(f"  {path}", err=True)
        typer.echo("upload each with purpose=batch, create batches for /v1/chat/completions, "
                   "then: labelrank batch INPUT OUTPUT --openai-batch collect RESULTS.jsonl",
                   err=True)
        return
    if openai_batch == "collect":
        stats, bad = collect(pipeline, settings, output, results or [], options)
        if bad:
            typer.echo(f"warning: {bad} unreadable lines in the results files", err=True)
        typer.echo(summary(stats, settings.llm_model, settings.llm_prices, BATCH_DISCOUNT),
                   err=True)
        return
    try:
        stats = run_batch(pipeline, settings, input_path, output, options)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {output} holds every finished record; run the same "
                   "command again to resume", err=True)
        raise typer.Exit(130) from None
    typer.echo(summary(stats, settings.llm_model, settings.llm_prices), err=True)


def main() -> None:
    """Console entry point: one line on stderr for any labelrank error, no stack trace."""
    try:
        app()
    except LabelrankError as exc:
        typer.echo(f"error [{exc.code}]: {exc.message}", err=True)
        sys.exit(2)


