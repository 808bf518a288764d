"""Loopback load test of `labelrank serve` in retrieval mode, beside in-process batch throughput.

    .venv/bin/python bench/load.py [--requests 600] [--seconds 20] [--out FILE.json]

Indexes the demo catalog into a temp dir, starts two `labelrank serve` subprocesses on copies
of it (micro-batching on and off), then in short rounds measures `Pipeline.classify_batch` in
this process on the catalog's example texts and sends the same texts from 1, 4 and 16
concurrent clients to each server in turn. Every level is capped by a request count and a time
limit (per server, split over the rounds). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.catalog import load_catalog  # noqa: E402
from service.factory import build_index, build_pipeline  # noqa: E402
from service.pipeline import ClassifyOptions, Pipeline  # noqa: E402
from service.settings import Settings  # noqa: E402

CATALOG = ROOT / "service" / "demo_data" / "catalog.jsonl"
CONCURRENCY = (1, 4, 16)
RETRIEVAL = ClassifyOptions(mode="retrieval")


def in_process(pipeline: Pipeline, texts: list[str], batch_size: int) -> tuple[int, float]:
    """(texts, seconds) of `classify_batch` over `texts` in batches of `batch_size`."""
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        pipeline.classify_batch(texts[start:start + batch_size], RETRIEVAL)
    return len(texts), time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(db: Path, port: int, env: dict[str, str],
                 log: Path | None = None) -> subprocess.Popen:
    """`labelrank serve` on loopback, waited on until /readyz answers 200 (stderr to `log`)."""
    command = [sys.executable, "-c", "from eval.cli import main; main()", "serve",
               "--db", str(db), "--host", "127.0.0.1", "--port", str(port)]
    stderr = log.open("w") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"labelrank serve exited with {process.returncode}")
        time.sleep(0.2)
    process.kill()
    raise SystemExit("labelrank serve did not become ready in 120 s")


async def load(url: str, texts: list[str], clients: int, max_requests: int,
               max_seconds: float) -> tuple[list[float], int, float]:
    """Closed loop: `clients` tasks send one request after another until either cap.

    Returns the latencies, the number of non-200 answers and the elapsed seconds.
    """
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = 0.0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors, sent
        while sent < max_requests and time.perf_counter() < deadline:
            text = texts[sent % len(texts)]
            sent += 1
            began = time.perf_counter()
            answer = await http.post("/v1/classify", json={"text": text, "mode": "retrieval"})
            latencies.append(time.perf_counter() - began)
            errors += answer.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        for text in texts[:5]:  # warm up the connection
            await http.post("/v1/classify", json={"text": text, "mode": "retrieval"})
        started = time.perf_counter()
        deadline = started + max_seconds
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return latencies, errors, time.perf_counter() - started


def summary(clients: int, latencies: list[float], errors: int, seconds: float) -> dict:
    """Requests per second and latency percentiles of one concurrency level."""
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"clients": clients, "requests": len(latencies), "errors": errors,
            "seconds": round(seconds, 2), "rps": round(len(latencies) / seconds, 1),
            "p50_ms": round(cuts[49] * 1000, 1), "p95_ms": round(cuts[94] * 1000, 1),
            "p99_ms": round(cuts[98] * 1000, 1)}


async def batch_endpoint(url: str, texts: list[str], size: int) -> float:
    """Texts per second through POST /v1/classify/batch, one request at a time."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        items = [{"text": t} for t in texts]
        await http.post("/v1/classify/batch", json={"items": items[:size], "mode": "retrieval"})
        started = time.perf_counter()
        for start in range(0, len(items), size):
            answer = await http.post("/v1/classify/batch",
                                     json={"items": items[start:start + size],
                                           "mode": "retrieval"})
            answer.raise_for_status()
        return len(items) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600, help="cap per concurrency level")
    parser.add_argument("--seconds", type=float, default=20.0, help="cap per level")
    parser.add_argument("--rounds", type=int, default=4,
                        help="split each measurement into this many alternating rounds")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    catalog = load_catalog(CATALOG)
    texts = [t for lab in catalog.labels.values() for t in lab.examples]
    figures: dict[str, object] = {"texts": len(texts), "labels": len(catalog),
                                  "cpus": os.cpu_count(), "load_avg_before": os.getloadavg()}
    # texts per round for each in-process batch size (one at a time is slow: a sample)
    sizes = {1: 48, 32: 256, 256: 256}
    with tempfile.TemporaryDirectory(prefix="labelrank-bench-") as tmp:
        settings = Settings(_env_file=None, db=Path(tmp) / "db")
        index = build_index(settings)
        index.sync(catalog)
        figures["vectors"] = index.vector_count()
        pipeline = build_pipeline(settings, index=index)
        pipeline.classify_batch(texts[:32], RETRIEVAL)  # warm up
        # Two servers, each on its own copy (one process per embedded directory). Machine load
        # here changes by the minute, so everything runs in short rounds, one after the other:
        # in-process batches, then each concurrency level against each server in turn.
        runs = {"microbatch": {}, "no_microbatch": {"LABELRANK_MICROBATCH_SIZE": "1",
                                                    "LABELRANK_MICROBATCH_WAIT_MS": "0"}}
        servers: dict[str, tuple[subprocess.Popen, str]] = {}
        local = {size: (0, 0.0) for size in sizes}
        http = {(name, n): ([], 0, 0.0) for name in runs for n in CONCURRENCY}
        try:
            for name, env in runs.items():
                db = Path(tmp) / name
                shutil.copytree(settings.db, db)
                port = free_port()
                servers[name] = (start_server(db, port, {**env, "LABELRANK_API_KEY": ""}),
                                 f"http://127.0.0.1:{port}")
            for round_ in range(args.rounds):
                for size, count in sizes.items():
                    start = (round_ * count) % len(texts)
                    done, secs = in_process(pipeline, texts[start:start + count], size)
                    local[size] = (local[size][0] + done, local[size][1] + secs)
                for clients in CONCURRENCY:
                    for name, (_, url) in servers.items():
                        lat, err, secs = asyncio.run(load(
                            url, texts, clients, args.requests // args.rounds,
                            args.seconds / args.rounds))
                        old = http[name, clients]
                        http[name, clients] = (old[0] + lat, old[1] + err, old[2] + secs)
            figures["batch_endpoint_texts_per_s"] = round(
                asyncio.run(batch_endpoint(servers["microbatch"][1], texts, 64)), 1)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    figures["in_process_texts_per_s"] = {
        str(size): round(done / secs, 1) for size, (done, secs) in local.items()}
    for name in runs:
        figures[name] = [summary(n, *http[name, n]) for n in CONCURRENCY]
    figures["load_avg_after"] = os.getloadavg()
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
