"""Batch labeling of a file: chunks through `classify_batch`, in order, appended, resumable."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prompts.answer_cache import Store
from retrieval.iterables import chunks
from service.adapters import cached_answers
from service.batch.io import (
    InputFormat,
    InputRecord,
    OutputWriter,
    count_records,
    open_input,
    read_records,
    resolve_format,
    scan_output,
)
from service.batch.parquet_output import (
    finish_parquet_output,
    is_parquet_output,
    journal_path,
    scan_parquet_output,
)
from service.batch.report import Progress, Stats
from service.batch.sidecar import check_and_record, meta_path, run_config
from service.engine import Engine
from service.pipeline import ClassifyOptions, Mode, Pipeline
from service.results import ClassifyResult, ItemError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchOptions:
    """How to read the input and what to write."""

    mode: Mode = "auto"
    text_field: str = "text"
    id_field: str = "id"
    input_format: InputFormat = "auto"
    chunk_size: int | None = None
    candidates: bool = True
    force: bool = False
    cache_dir: Path | None = None  # LLM answers per exact request, shared with eval


DEFAULTS = BatchOptions()


def run_batch(engine: Engine, source: str, output: Path, options: BatchOptions = DEFAULTS,
              progress_every_s: float = 10.0, tty: bool | None = None) -> Stats:
    """Label every input record not yet in OUTPUT; returns counts over the whole OUTPUT.
    OUTPUT named .parquet is journaled as JSONL and written as Parquet at the end."""
    pipeline, settings = engine.pipeline, engine.settings
    mode = pipeline.resolve_mode(options.mode)  # fails now, not after the first chunk
    fmt = resolve_format(source, options.input_format)
    config = run_config(engine, mode, "online", options.text_field, options.id_field)
    stats = Stats(total=count_records(source, fmt))
    answers = (cached_answers(pipeline.selector, Store.in_dir(options.cache_dir))
               if mode == "llm" and options.cache_dir else None)
    pipeline = pipeline.with_parts(selector=answers) if answers else pipeline

    def seen(record: dict) -> None:
        stats.count(record)
        stats.previous += 1

    parquet = is_parquet_output(output)
    with open_input(source) as stream:
        done = scan_parquet_output(output, seen) if parquet else scan_output(output, seen)
        check_and_record(meta_path(output), config, has_records=bool(done), force=options.force)
        with OutputWriter(journal_path(output) if parquet else output) as writer, \
                Progress(stats, progress_every_s, tty) as progress:
            todo = (r for r in read_records(stream, fmt, options.text_field, options.id_field)
                    if r.key not in done)
            for records in labeled_chunks(pipeline, todo, mode, options,
                                          settings.llm_concurrency):
                writer.write(records)
                progress.advance(records)
    if parquet:
        finish_parquet_output(output)
    if answers:
        stats.cached_answers, stats.cached_usage = answers.hits, answers.saved
    return stats


def labeled_chunks(pipeline: Pipeline, records: Iterable[InputRecord], mode: Mode,
                   options: BatchOptions, llm_concurrency: int) -> Iterator[list[dict]]:
    """Output records chunk by chunk, in input order: what gets appended to an output."""
    size = options.chunk_size or default_chunk_size(mode, llm_concurrency)
    # In LLM mode a second chunk retrieves while the first one's slowest LLM calls finish.
    workers = 2 if mode == "llm" else 1
    classify = ClassifyOptions(mode=mode)
    return in_order(lambda chunk: label_chunk(pipeline, chunk, classify, options.candidates),
                    chunks(records, size), workers)


def default_chunk_size(mode: str, llm_concurrency: int) -> int:
    """Large chunks feed the embedder well; LLM chunks stay small so a kill loses little."""
    return 256 if mode == "retrieval" else min(256, max(16, 4 * llm_concurrency))


def label_chunk(pipeline: Pipeline, chunk: list[InputRecord], options: ClassifyOptions,
                candidates: bool = True) -> list[dict]:
    """One output record per input record of the chunk, in order."""
    valid = [r for r in chunk if r.error is None]
    outcomes = iter(pipeline.classify_batch([r.text or "" for r in valid], options))
    return [output_record(r, None if r.error else next(outcomes), candidates) for r in chunk]


def output_record(record: InputRecord, outcome: ClassifyResult | ItemError | None,
                  candidates: bool = True) -> dict:
    """`{line, id, ...result}` or `{line, id, error}`."""
    if outcome is None:
        return {**record.head(), "error": record.error}
    body = outcome.model_dump(mode="json")
    if not candidates:
        body.pop("candidates", None)
    return {**record.head(), **body}


def in_order(work: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`work(item)` for each item on `workers` threads, results yielded in input order."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="labelrank-batch")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
