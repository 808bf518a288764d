"""Texts/s of `labelrank batch --engine local` next to `--engine ray` with 1 and 2 workers.

    .venv/bin/python bench/ray_batch.py --db /tmp/lr/clinc-db            # 20,000 texts
    .venv/bin/python bench/ray_batch.py --db /tmp/lr/clinc-db --texts 300 --shard-size 100
    .venv/bin/python bench/ray_batch.py --db /tmp/lr/clinc-db --texts 2000 --parquet   # in and out

Retrieval only, on the CLINC150 index (catalog plus train texts as examples, built into --db on
the first run); the texts are CLINC150 train and valid, then HWU64 train, read by path from
../shared/datasets. In one run: local, Ray with 1 worker on every CPU, Ray with 1 worker per
CPU, local again (a load change on a shared machine shows up as two local figures). Ray's
startup (the cluster, then each run's workers loading the model and copying the index) is
timed apart from labeling. Two cores cannot show scale-out; this shows what Ray costs. Each Ray
run's merged output is compared with the first local run's, record by record: the labels with
their scores, and the candidates' ids (`--parquet`: Parquet in, Parquet out, as a user with
Parquet data runs it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from service.batch.merge import merge_parts
from service.batch.parquet_output import parquet_records
from service.batch.ray_run import RayOptions, RayRun, run_batch_ray
from service.batch.run import BatchOptions, run_batch
from service.engine import open_engine
from service.jobs.indexing import build_or_update
from service.settings import Settings

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SOURCES = [DATASETS / "clinc150" / "train.jsonl", DATASETS / "clinc150" / "valid.jsonl",
           DATASETS / "hwu64" / "train.jsonl"]
RETRIEVAL = BatchOptions(mode="retrieval")


def write_texts(path: Path, count: int) -> int:
    """The first `count` texts of SOURCES as batch input (Parquet when `path` is named so);
    how many there were."""
    rows: list[dict] = []
    for source in SOURCES:
        for line in source.open():
            if len(rows) == count:
                break
            rows.append({"id": f"t{len(rows)}", "text": json.loads(line)["text"]})
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)


def answers_of(path: Path) -> list[tuple]:
    """Per record: its id, its labels with their scores, its candidates' ids."""
    records = (parquet_records(path) if path.suffix == ".parquet"
               else (json.loads(line) for line in path.open()))
    return [(r["id"], [(x["id"], x["score"]) for x in r.get("labels") or []],
             [x["id"] for x in r.get("candidates") or []]) for r in records]


def main() -> None:
    """Index once, then time the local engine and Ray with 1 and 2 workers on the same texts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="index directory (default: a temp dir)")
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=2_000)
    parser.add_argument("--parquet", action="store_true", help="Parquet input and outputs")
    args = parser.parse_args()
    ext = ".parquet" if args.parquet else ".jsonl"
    import ray

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="labelrank-ray-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        settings = Settings(_env_file=None, db=args.db or tmp / "db", llm_base_url=None,
                            llm_api_key=None)
        report, seconds = build_or_update(settings, DATASETS / "clinc150" / "catalog.jsonl",
                                          [DATASETS / "clinc150" / "train.jsonl"])
        print(f"index: +{report.vectors_added} vectors ({report.vectors_total} in all) in "
              f"{seconds:.1f} s")
        source = tmp / f"in{ext}"
        n = write_texts(source, args.texts)
        write_texts(tmp / "warm.jsonl", 500)
        engine = open_engine(settings)
        # The first pass over new input shapes is slow; Ray's fresh workers pay it in their run.
        run_batch(engine, str(tmp / "warm.jsonl"), tmp / "warm-out.jsonl", RETRIEVAL, tty=False)

        def local(name: str) -> float:
            started = time.perf_counter()
            run_batch(engine, str(source), tmp / name, RETRIEVAL,
                      progress_every_s=60, tty=False)
            return time.perf_counter() - started

        first = local(f"local-1{ext}")
        local_answers = answers_of(tmp / f"local-1{ext}")
        started = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
        cluster_s = time.perf_counter() - started
        runs: dict[str, tuple[RayRun, float]] = {}
        for workers, per_worker in ((1, cpus), (cpus, 1)):
            name = f"ray, {workers} worker{'s' if workers > 1 else ''} x {per_worker} CPU"
            out = tmp / f"ray-{workers}"
            started = time.perf_counter()
            run = run_batch_ray(engine, str(source), out, RETRIEVAL,
                                RayOptions(workers=workers, cpus_per_worker=per_worker,
                                           shard_size=args.shard_size),
                                progress_every_s=60, tty=False)
            runs[name] = (run, time.perf_counter() - started)
            merge_parts(out, out.with_suffix(ext))
            pairs = list(zip(local_answers, answers_of(out.with_suffix(ext)), strict=True))
            labels = sum(a[:2] != b[:2] for a, b in pairs)
            shortlists = sum(a[2] != b[2] for a, b in pairs)
            print(f"{name}: {run.stats.records} records; against local: {labels} with other "
                  f"labels or label scores, {shortlists} with other candidates")
        ray.shutdown()
        second = local(f"local-2{ext}")
    local_s = (first + second) / 2
    print(f"\nmachine: {platform.machine()}, {cpus} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {n} texts, shard size "
          f"{args.shard_size}; Ray cluster start {cluster_s:.1f} s (once)")
    print(f"local: {n / first:.1f} and {n / second:.1f} texts/s; driver process peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print("\noverhead: (labeling time - local time) / texts; startup: workers placed, model "
          "loaded, index copied")
    print("\n| engine | texts/s (labeling) | texts/s (with startup) | vs local | startup s "
          "| overhead ms/text | peak RSS per worker, MB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| local | {n / local_s:.1f} | {n / local_s:.1f} | 1.00 | 0 | 0 | - |")
    for name, (run, wall) in runs.items():
        overhead_ms = (run.labeling_s - local_s) / n * 1000
        rss = ", ".join(f"{w['peak_rss_mb']:.0f}" for w in run.workers)
        print(f"| {name} | {n / run.labeling_s:.1f} | {n / wall:.1f} | "
              f"{local_s / run.labeling_s:.2f} | {run.startup_s:.1f} | {overhead_ms:+.2f} | "
              f"{rss} |")


if __name__ == "__main__":
    main()
