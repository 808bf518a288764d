"""Texts/s of retrieval-only `labelrank batch` next to the raw embedder on the same texts.

    .venv/bin/python bench/batch_throughput.py            # indexes CLINC150 into a temp dir
    .venv/bin/python bench/batch_throughput.py --db DIR   # indexes into DIR (kept; reruns reuse it)

The raw embedder is timed just before and just after the batch run, so a machine whose load
changes during the run shows up as two different raw figures. Texts per CPU-second of this
process are printed too; on a shared machine they move with the load less than wall time does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from service.batch.run import BatchOptions, default_chunk_size, run_batch
from service.engine import open_engine
from service.jobs.indexing import build_or_update
from service.settings import Settings

CLINC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clinc150"


class Clock:
    """Wall and process CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def raw_embedder(embedder, texts: list[str], chunk: int) -> Clock:
    """The embedder alone, fed in the batch command's chunk size, on a fresh worker thread."""

    def run() -> Clock:
        with Clock() as clock:
            for start in range(0, len(texts), chunk):
                embedder.embed(texts[start:start + chunk])
        return clock

    # The batch command embeds on a worker thread too; after indexing in the same process,
    # the same calls measured on the main thread took about 1.5x the CPU time.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def rates(n: int, clock: Clock) -> str:
    return f"{n / clock.wall:7.1f} texts/s wall, {n / clock.cpu:7.1f} texts/CPU-s"


def main() -> None:
    """Index, warm up, then time raw embedding, batch labeling, raw embedding again."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=Path, default=CLINC / "train.jsonl")
    parser.add_argument("--catalog", type=Path, default=CLINC / "catalog.jsonl")
    parser.add_argument("--db", type=Path, help="existing index (default: build one in a temp dir)")
    args = parser.parse_args()
    texts = [json.loads(line)["text"] for line in args.texts.open()]
    with tempfile.TemporaryDirectory(prefix="labelrank-bench-") as tmp:
        settings = Settings(_env_file=None, db=args.db or Path(tmp) / "db",
                            llm_base_url=None, llm_api_key=None)
        report, seconds = build_or_update(settings, args.catalog, [args.texts])
        print(f"index: +{report.vectors_added} vectors ({report.vectors_total} in all) "
              f"in {seconds:.1f} s")
        engine = open_engine(settings)
        embedder = engine.index.embedder
        chunk = default_chunk_size("retrieval", settings.llm_concurrency)
        raw_embedder(embedder, texts, chunk)  # warm-up: the first pass over new shapes is slow
        before = raw_embedder(embedder, texts, chunk)
        with Clock() as batch:
            stats = run_batch(engine, str(args.texts), Path(tmp) / "out.jsonl",
                              BatchOptions(mode="retrieval"), progress_every_s=30, tty=False)
        after = raw_embedder(embedder, texts, chunk)
    raw = Clock()
    raw.wall, raw.cpu = (before.wall + after.wall) / 2, (before.cpu + after.cpu) / 2
    n = len(texts)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, CPU")
    print(f"texts: {len(texts)} from {args.texts.name}; index: {engine.index.vector_count()} "
          f"vectors, {len(engine.index.labels)} labels; chunk {chunk}, "
          f"neighbours {settings.neighbours}, top_k {settings.top_k}")
    print(f"raw embedder, before: {rates(n, before)}")
    print(f"raw embedder, after:  {rates(n, after)}")
    print(f"raw embedder, mean:   {rates(n, raw)}")
    print(f"batch, retrieval:     {rates(stats.written, batch)} "
          f"({stats.written} records, {sum(stats.errors.values())} errors)")
    print(f"ratio batch/raw:      {raw.wall / batch.wall * stats.written / n:7.2f} wall, "
          f"{raw.cpu / batch.cpu * stats.written / n:7.2f} CPU")


if __name__ == "__main__":
    main()
