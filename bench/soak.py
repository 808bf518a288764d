"""Bounded soak test of `labelrank serve` on loopback: concurrent clients, label churn, LLM faults.

    nice -n 10 .venv/bin/python bench/soak.py [--clients 16] [--seconds 60] [--fault-rate 0.1]

Indexes the demo catalog into a temp dir and starts `labelrank serve` against a fake
OpenAI-compatible LLM in this process (tests/fake_openai.py) that answers a share
`--fault-rate` of requests with a random fault (429, 5xx, hang, dropped connection, invalid or
schema-violating JSON, unknown or duplicate ids, too many labels, empty choice, slow stream).
`--clients` closed-loop clients classify for `--seconds` while one more client creates, renames
and deletes labels. Reports requests served, errors (non-200 answers and transport errors),
degraded share, latency percentiles, and the server's RSS at start and end with samples in
between. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import CATALOG, free_port, start_server  # noqa: E402
from service.indexing import build_or_update  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.fake_openai import FakeOpenAI, Reply, with_faults  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def first_traceback(log: str) -> list[str]:
    """The first Python traceback in the server's stderr, if any (what a 5xx hides)."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and lines[i][0] not in " T"
                and not lines[i].startswith("During")), len(lines) - 1)
    return lines[start:end + 1][-40:]


def first_slot(request: dict) -> Reply:
    """A well-behaved model: picks the first candidate."""
    return Reply.labels("C01")


async def classify_loop(http: httpx.AsyncClient, texts: list[str], offset: int, until: float,
                        stats: dict) -> None:
    n = offset
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            answer = await http.post("/v1/classify", json={"text": texts[n % len(texts)]})
            stats["latencies"].append(time.perf_counter() - started)
            if answer.status_code != 200:
                stats["errors"].append(f"{answer.status_code}: {answer.text[:120]}")
            elif answer.json()["degraded"]:
                stats["degraded"] += 1
        except httpx.HTTPError as exc:
            stats["errors"].append(f"{type(exc).__name__}: {exc}")
        n += 1


async def churn_loop(http: httpx.AsyncClient, until: float, stats: dict) -> None:
    """Create, rename and delete labels, one write every ~0.2 s."""
    n = 0
    while time.monotonic() < until:
        label = f"soak.{n % 5}"
        steps = [("PUT", {"name": f"Soak {n}", "examples": [f"soak example {n}"]}),
                 ("PATCH", {"name": f"Soak renamed {n}"}), ("DELETE", None)]
        for method, body in steps:
            answer = await http.request(method, f"/v1/labels/{label}",
                                        content=json.dumps(body) if body else None,
                                        headers={"Content-Type": "application/json"})
            stats["writes"] += 1
            if answer.status_code != 200:
                stats["errors"].append(f"write {answer.status_code}: {answer.text[:120]}")
            await asyncio.sleep(0.2)
        n += 1


async def sample_rss(pid: int, until: float, samples: list[float]) -> None:
    """RSS ten times over the run, to show a trend rather than two points."""
    interval = max(1.0, (until - time.monotonic()) / 10)
    while time.monotonic() + interval <= until + 0.5:
        await asyncio.sleep(interval)
        samples.append(round(rss_mb(pid), 1))


async def soak(url: str, pid: int, texts: list[str], clients: int, seconds: float) -> dict:
    stats: dict = {"latencies": [], "errors": [], "degraded": 0, "writes": 0}
    samples: list[float] = []
    until = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(classify_loop(http, texts, i * 7, until, stats)
                               for i in range(clients)),
                             churn_loop(http, until, stats), sample_rss(pid, until, samples))
    stats["rss_samples_mb"] = samples
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()
    catalog = [json.loads(line) for line in CATALOG.read_text().splitlines() if line.strip()]
    texts = [e for record in catalog for e in record.get("examples", [])] or [
        record["name"] for record in catalog]

    with tempfile.TemporaryDirectory(prefix="labelrank-soak-") as tmp, FakeOpenAI() as fake:
        db = Path(tmp) / "db"
        build_or_update(Settings(_env_file=None, db=db), CATALOG, [])
        fake.default = with_faults(first_slot, rate=args.fault_rate, seed=1, hang_s=1.5)
        env = {"LABELRANK_LLM_BASE_URL": fake.base_url, "LABELRANK_LLM_API_KEY": "soak",
               "LABELRANK_LLM_MODEL": "fake-model", "LABELRANK_LLM_TIMEOUT_S": "1",
               "LABELRANK_LLM_MAX_ATTEMPTS": "2", "LABELRANK_LLM_MAX_WAIT_S": "0.1",
               "LABELRANK_API_KEY": "", "LABELRANK_API_WRITE_KEY": "",
               "LABELRANK_CHROMA_HOST": "", "LABELRANK_EMBED_THREADS": "1"}
        port = free_port()
        server = start_server(db, port, env, log=Path(tmp) / "serve.log")
        try:
            url = f"http://127.0.0.1:{port}"
            httpx.post(f"{url}/v1/classify", json={"text": texts[0]}, timeout=60)  # warm up
            rss_start = rss_mb(server.pid)
            started = time.perf_counter()
            stats = asyncio.run(soak(url, server.pid, texts, args.clients, args.seconds))
            elapsed = time.perf_counter() - started
            rss_end = rss_mb(server.pid)
            llm_requests = fake.request_count
        finally:
            server.terminate()
            server.wait(30)
            server_log = (Path(tmp) / "serve.log").read_text(errors="replace")

    latencies = sorted(stats["latencies"])
    served = len(latencies)
    quantiles = statistics.quantiles(latencies, n=100) if served > 1 else [0.0] * 99
    report = {
        "clients": args.clients, "seconds": round(elapsed, 1), "fault_rate": args.fault_rate,
        "served": served, "per_s": round(served / elapsed, 1),
        "errors": len(stats["errors"]), "error_samples": stats["errors"][:5],
        "degraded": stats["degraded"],
        "degraded_share": round(stats["degraded"] / max(served, 1), 4),
        "label_writes": stats["writes"], "llm_requests": llm_requests,
        "p50_ms": round(quantiles[49] * 1000, 1), "p99_ms": round(quantiles[98] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else 0.0,
        "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
        "rss_samples_mb": stats["rss_samples_mb"],
        "first_server_traceback": first_traceback(server_log),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
