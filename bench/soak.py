"""Soak test of `labelrank serve` on loopback: concurrent clients, label churn, LLM faults, RSS.

    nice -n 10 .venv/bin/python bench/soak.py [--clients 16] [--seconds 60] [--fault-rate 0.1]
        [--churn-every 0.2] [--sample-s 5] [--slope-minutes 20] [--png FILE.png] [--out FILE.json]
        [--compact-min-dead-slots N] [--compact-dead-ratio R]

Indexes the demo catalog into a temp dir and starts `labelrank serve` against a fake
OpenAI-compatible LLM in this process (tests/fake_openai.py) that answers a share
`--fault-rate` of requests with a random fault (429, 5xx, hang, dropped connection, invalid or
schema-violating JSON, unknown or duplicate ids, too many labels, empty choice, slow stream,
slow headers). `--clients` closed-loop clients classify for `--seconds` while one more client
creates, renames and deletes labels (one write every `--churn-every` seconds, 0: none) and
reads each label back after each write. Reports requests served, errors (non-200 answers and
transport errors), writes not visible to the next read, degraded share, latency percentiles,
the server's RSS every `--sample-s` seconds, and the least-squares slope of RSS over the last
`--slope-minutes` minutes; `--png` draws that curve. Nothing leaves loopback.

The compaction thresholds (LABELRANK_COMPACT_*; the server's upkeep checks them every 30 s)
can be lowered so that a run crosses compactions: the report then lists each compaction seen
on /metrics with the RSS just after it, and counts the answers whose first candidates (labels
of the catalog, not the churned ones) differ from the same text's answer before the run: a
search served from a half-built generation would miss labels there.
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
from service.jobs.indexing import build_or_update  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.fake_openai import FakeOpenAI, Reply, with_faults  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def slope_mb_per_s(curve: list[tuple[float, float]], window_s: float) -> tuple[float, float]:
    """Least-squares slope of (seconds, MB) over the last `window_s` seconds, and the window
    actually covered (shorter when the run is)."""
    if not curve:
        return 0.0, 0.0
    end = curve[-1][0]
    points = [(t, mb) for t, mb in curve if t >= end - window_s]
    if len(points) < 2:
        return 0.0, 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_mb = statistics.fmean(mb for _, mb in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (mb - mean_mb) for t, mb in points) / spread if spread else 0.0
    return slope, points[-1][0] - points[0][0]


def plot_rss(curve: list[tuple[float, float]], slope: float, window_s: float, title: str,
             path: Path) -> None:
    """The RSS curve with the fitted slope over its window, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [t / 60 for t, _ in curve]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(minutes, [mb for _, mb in curve], lw=1.2, label="server RSS")
    if window_s:
        end_t = curve[-1][0]
        start_t = end_t - window_s
        window = [mb for t, mb in curve if t >= start_t]
        mid_t, mid_mb = (start_t + end_t) / 2, statistics.fmean(window)
        ax.plot([start_t / 60, end_t / 60],
                [mid_mb + slope * (start_t - mid_t), mid_mb + slope * (end_t - mid_t)],
                "--", color="tab:red",
                label=f"slope over the last {window_s / 60:.0f} min: {slope:.4f} MB/s")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        text = texts[n % len(texts)]
        try:
            answer = await http.post("/v1/classify", json={"text": text})
            stats["latencies"].append(time.perf_counter() - started)
            if answer.status_code != 200:
                stats["errors"].append(f"{answer.status_code}: {answer.text[:120]}")
                n += 1
                continue
            body = answer.json()
            if body["degraded"]:
                stats["degraded"] += 1
            if first_candidates(body) != stats["before"][text]:
                stats["changed"].append({
                    "text": text, "at_s": round(time.monotonic() - stats["started"], 1),
                    "before": stats["before"][text], "now": first_candidates(body),
                    "scores": [round(c["score"], 4) for c in body["candidates"][:FIRST + 2]]})
        except httpx.HTTPError as exc:
            stats["errors"].append(f"{type(exc).__name__}: {exc}")
        n += 1


def visible(method: str, body: dict | None, answer: httpx.Response) -> bool:
    """Whether a read right after a write shows that write."""
    if method == "DELETE":
        return answer.status_code == 404
    return answer.status_code == 200 and answer.json()["name"] == (body or {}).get("name")


async def churn_loop(http: httpx.AsyncClient, until: float, every_s: float, stats: dict) -> None:
    """Create, rename and delete labels, one write every `every_s`, each read back at once."""
    n = 0
    while time.monotonic() < until:
        label = f"soak.{n % 5}"
        steps = [("PUT", {"name": f"Soak {n}", "examples": [f"soak example {n}"]}),
                 ("PATCH", {"name": f"Soak renamed {n}"}), ("DELETE", None)]
        for method, body in steps:
            try:
                answer = await http.request(method, f"/v1/labels/{label}",
                                            content=json.dumps(body) if body else None,
                                            headers={"Content-Type": "application/json"})
                stats["writes"] += 1
                if answer.status_code != 200:
                    stats["errors"].append(f"write {answer.status_code}: {answer.text[:120]}")
                elif not visible(method, body, await http.get(f"/v1/labels/{label}")):
                    stats["stale_reads"] += 1
            except httpx.HTTPError as exc:
                stats["errors"].append(f"write {type(exc).__name__}: {exc}")
            await asyncio.sleep(every_s)
        n += 1


FIRST = 3  # candidates of the catalog compared with the text's answer before the run


def first_candidates(answer: dict) -> list[str]:
    """The first catalog labels on an answer's shortlist (churned `soak.*` labels left out)."""
    return [c["id"] for c in answer.get("candidates", [])
            if not c["id"].startswith("soak.")][:FIRST]


def metric(text: str, name: str) -> float | None:
    """One unlabelled sample of the Prometheus text format (None: not there)."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


async def watch_compactions(http: httpx.AsyncClient, pid: int, started: float, until: float,
                            every_s: float, seen: list[dict]) -> None:
    """Each compaction the server counts on /metrics, with the RSS just after it."""
    count = 0.0
    while time.monotonic() < until:
        await asyncio.sleep(min(every_s, max(0.0, until - time.monotonic())))
        try:
            text = (await http.get("/metrics")).text
        except httpx.HTTPError:
            continue
        now = metric(text, "labelrank_index_compactions_total") or 0.0
        if now > count:
            count = now
            seen.append({"at_s": round(time.monotonic() - started, 1), "compactions": int(now),
                         "rss_mb": round(rss_mb(pid), 1),
                         "dead_slots": metric(text, "labelrank_index_dead_slots")})
            print(f"compaction {int(now)} at {seen[-1]['at_s']} s: RSS {seen[-1]['rss_mb']} MB",
                  file=sys.stderr, flush=True)


async def answers_before(url: str, texts: list[str]) -> dict[str, list[str]]:
    """Each text's first candidates before any label write (what a complete generation
    answers), in retrieval-only batches: the shortlist is the same in every mode."""
    distinct = list(dict.fromkeys(texts))
    before: dict[str, list[str]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for start in range(0, len(distinct), 256):
            chunk = distinct[start:start + 256]
            answer = await http.post("/v1/classify/batch", json={
                "mode": "retrieval", "items": [{"text": text} for text in chunk]})
            answer.raise_for_status()
            before.update(zip(chunk, map(first_candidates, answer.json()["results"]),
                              strict=True))
    return before


async def sample_rss(pid: int, started: float, until: float, every_s: float,
                     curve: list[tuple[float, float]]) -> None:
    """(seconds since start, RSS MB) every `every_s` seconds until the end of the run."""
    while time.monotonic() < until:
        curve.append((round(time.monotonic() - started, 1), round(rss_mb(pid), 1)))
        await asyncio.sleep(min(every_s, max(0.0, until - time.monotonic())))
    curve.append((round(time.monotonic() - started, 1), round(rss_mb(pid), 1)))


async def soak(url: str, pid: int, texts: list[str], before: dict[str, list[str]],
               args: argparse.Namespace) -> dict:
    stats: dict = {"latencies": [], "errors": [], "degraded": 0, "writes": 0, "stale_reads": 0,
                   "rss_curve": [], "changed": [], "compactions": []}
    stats["before"] = before
    started = stats["started"] = time.monotonic()
    until = started + args.seconds
    limits = httpx.Limits(max_connections=args.clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        tasks = [classify_loop(http, texts, i * 7, until, stats) for i in range(args.clients)]
        if args.churn_every > 0:
            tasks.append(churn_loop(http, until, args.churn_every, stats))
        tasks.append(sample_rss(pid, started, until, args.sample_s, stats["rss_curve"]))
        tasks.append(watch_compactions(http, pid, started, until, 1.0, stats["compactions"]))
        await asyncio.gather(*tasks)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--churn-every", type=float, default=0.2,
                        help="seconds between label writes (0: no label churn)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval")
    parser.add_argument("--slope-minutes", type=float, default=20.0,
                        help="RSS slope over this many final minutes (the whole run if shorter)")
    parser.add_argument("--png", type=Path, help="draw the RSS curve into this PNG")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    parser.add_argument("--compact-min-dead-slots", type=int, default=None,
                        help="LABELRANK_COMPACT_MIN_DEAD_SLOTS of the server (default: its own)")
    parser.add_argument("--compact-dead-ratio", type=float, default=None,
                        help="LABELRANK_COMPACT_DEAD_RATIO of the server (default: its own)")
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
        for name in ("compact_min_dead_slots", "compact_dead_ratio"):
            if getattr(args, name) is not None:
                env[f"LABELRANK_{name.upper()}"] = str(getattr(args, name))
        port = free_port()
        server = start_server(db, port, env, log=Path(tmp) / "serve.log")
        try:
            url = f"http://127.0.0.1:{port}"
            httpx.post(f"{url}/v1/classify", json={"text": texts[0]}, timeout=60)  # warm up
            before = asyncio.run(answers_before(url, texts))
            rss_start = rss_mb(server.pid)
            started = time.perf_counter()
            stats = asyncio.run(soak(url, server.pid, texts, before, args))
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
    curve = stats["rss_curve"]
    slope, window_s = slope_mb_per_s(curve, args.slope_minutes * 60)
    report = {
        "clients": args.clients, "seconds": round(elapsed, 1), "fault_rate": args.fault_rate,
        "churn_every_s": args.churn_every,
        "served": served, "per_s": round(served / elapsed, 1),
        "errors": len(stats["errors"]), "error_samples": stats["errors"][:5],
        "degraded": stats["degraded"],
        "degraded_share": round(stats["degraded"] / max(served, 1), 4),
        "label_writes": stats["writes"], "stale_reads": stats["stale_reads"],
        "compactions": len(stats["compactions"]), "after_compactions": stats["compactions"],
        "changed_answers": len(stats["changed"]), "changed_samples": stats["changed"][:3],
        "llm_requests": llm_requests,
        "p50_ms": round(quantiles[49] * 1000, 1), "p99_ms": round(quantiles[98] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else 0.0,
        "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
        "rss_slope_mb_per_s": round(slope, 5), "rss_slope_window_s": round(window_s, 1),
        "rss_curve": curve,
        "first_server_traceback": first_traceback(server_log),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "rss_curve"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.png:
        plot_rss(curve, slope, window_s,
                 f"labelrank serve, {args.clients} clients, label write every "
                 f"{args.churn_every:g} s, {args.fault_rate:.0%} LLM faults: "
                 f"{served:,} requests, {len(stats['errors'])} errors", args.png)


if __name__ == "__main__":
    main()
