"""How labelrank's cost grows with the catalog: build, latency, throughput, memory, disk.

Builds a catalog of N real ICD-10-CM labels with E examples each, drawn from real sentences of
the other shared datasets (train splits, ~85K distinct texts; past those, texts repeat under
other labels), indexes it with the same code as `labelrank index`, and serves it in
retrieval-only mode with the same code as `labelrank classify`. Queries are validation texts,
never indexed. Each phase runs in its own process, so peak RSS is per phase; every speed figure
sits next to the raw embedder's on the same texts, measured in the same run.

    python bench/scale.py --labels 3000                     # minutes: iterate with this
    python bench/scale.py --labels 3000 30000 100000 --json docs/scale.json
    python bench/scale.py --labels 1000 --backend onnx --http   # also through `labelrank serve`
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from retrieval.embedder import Embedder
    from service.pipeline import ClassifyOptions, Pipeline

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"
EXAMPLE_SOURCES = ["goemotions/train", "clinc150/train", "banking77/train", "hwu64/train",
                   "nlupp/train", "banking77_oos/train"]
QUERY_SOURCES = ["clinc150/valid", "goemotions/valid", "hwu64/valid", "banking77_oos/valid"]
RAW_SAMPLE = 20_000
REPEATS = 3  # batch timings: the best of this many rounds
HTTP_CLIENTS = 16


def sentences(sources: list[str]) -> list[str]:
    """Distinct texts of the given splits, in a fixed order."""
    seen: dict[str, None] = {}
    for source in sources:
        with (DATA / f"{source}.jsonl").open() as handle:
            for line in handle:
                text = json.loads(line)["text"].strip()
                if text:
                    seen.setdefault(text, None)
    return list(seen)


def scale_catalog(n_labels: int, per_label: int):
    """The first `n_labels` ICD-10-CM labels (parents come first), `per_label` examples each."""
    from retrieval.catalog import Catalog, load_catalog

    icd = load_catalog(DATA / "icd10cm" / "catalog.jsonl")
    chosen = list(icd.labels.values())[:n_labels]
    pool = sentences(EXAMPLE_SOURCES)
    labels = {}
    for i, label in enumerate(chosen):
        # Past the pool's end texts repeat under other labels, in a scrambled order (a text is
        # never repeated within one label): real lengths, so real embedding cost.
        examples = dict.fromkeys(pool[(k * 7919) % len(pool)] if k >= len(pool) else pool[k]
                                 for k in range(i * per_label, (i + 1) * per_label))
        labels[label.id] = replace(label, examples=tuple(examples))
    return Catalog(labels)


def settings_for(db: Path, backend: str):
    """Retrieval-only settings on an embedded index (the product defaults otherwise)."""
    from service.settings import Settings

    return Settings(_env_file=None, db=db, embedder_backend=backend,
                    llm_base_url=None, llm_api_key=None)


def query_texts(args: dict) -> tuple[list[str], list[str]]:
    """The single-text queries and the batch, validation texts in a fixed random order."""
    queries = sentences(QUERY_SOURCES)
    rng = np.random.default_rng(0)
    singles = [queries[i] for i in rng.permutation(len(queries))[:args["queries"]]]
    return singles, [queries[i] for i in rng.permutation(len(queries))[:args["batch"]]]


def percentiles(values_ms: list[float]) -> dict[str, float]:
    array = np.asarray(values_ms)
    return {f"p{q}": round(float(np.percentile(array, q)), 2) for q in (50, 95, 99)}


# -- phases (each runs in its own process) --------------------------------------------------

def phase_build(args: dict) -> dict:
    """Index the scale catalog as `labelrank index` does."""
    from service.jobs.indexing import index_catalog

    catalog = scale_catalog(args["labels"], args["per_label"])
    report, seconds = index_catalog(settings_for(Path(args["db"]), args["backend"]), catalog)
    return {"labels": len(catalog), "vectors": report.vectors_total, "build_s": round(seconds, 1),
            "build_texts_per_s": round(report.vectors_added / seconds),
            "build_main_rss_gb": _rss_gb(resource.RUSAGE_SELF),
            "build_worker_rss_gb": _rss_gb(resource.RUSAGE_CHILDREN)}


def _rss_gb(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 2**20, 2)


def phase_raw(args: dict) -> dict:
    """The embedder alone on the same texts: the physical limit of this machine."""
    from service.factory import build_embedder

    catalog = scale_catalog(args["labels"], args["per_label"])
    texts = [t for label in catalog.labels.values() for t in (label.name, *label.examples)]
    sample = [texts[i] for i in np.linspace(0, len(texts) - 1, min(RAW_SAMPLE, len(texts)),
                                            dtype=int)]
    embedder = build_embedder(settings_for(Path(args["db"]), args["backend"]))
    embedder.embed(sample[:64])
    started = time.perf_counter()
    embedder.embed(sample)
    return {"raw_build_texts_per_s": round(len(sample) / (time.perf_counter() - started))}


def phase_serve(args: dict) -> dict:
    """Retrieval-only classify: single-text latency and batch throughput, each next to the
    raw embedder on the same texts."""
    from service.factory import build_embedder, build_pipeline
    from service.pipeline import ClassifyOptions

    settings = settings_for(Path(args["db"]), args.get("serve_backend") or args["backend"])
    pipeline = build_pipeline(settings)
    embedder = build_embedder(settings)
    singles, batch = query_texts(args)
    options = ClassifyOptions(mode="retrieval")
    for text in singles[:20]:  # warm caches, allocator and HNSW pages
        pipeline.classify(text, options)
    index, neighbours = pipeline.retriever.index, pipeline.retriever.neighbours
    classify_ms, embed_ms, query_ms = [], [], []
    for n, text in enumerate(singles):
        # Whichever runs first on a text meets colder caches: the order alternates.
        if n % 2:
            classify_ms.append(timed_ms(lambda t=text: pipeline.classify(t, options)))
        started = time.perf_counter()
        vector = embedder.embed([text])
        embed_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        index.nearest_ids(vector, neighbours)  # Chroma's own query: the floor beside embedding
        query_ms.append((time.perf_counter() - started) * 1000)
        if not n % 2:
            classify_ms.append(timed_ms(lambda t=text: pipeline.classify(t, options)))
    pipeline.classify_batch(batch[:256], options)  # first batch shapes, both sides
    embedder.embed(batch[:256])
    stages = stage_costs(pipeline, embedder, batch, options)
    batch_rate = 1000 / stages["total"]
    raw_rate = 1000 / stages["raw_embed"]
    classify_p50, embed_p50 = np.percentile(classify_ms, 50), np.percentile(embed_ms, 50)
    query_p50 = np.percentile(query_ms, 50)
    return {"classify_ms": percentiles(classify_ms), "raw_embed_ms": percentiles(embed_ms),
            "chroma_query_ms": percentiles(query_ms),
            "classify_p50_vs_embed_p50": round(float(classify_p50 / embed_p50), 2),
            "classify_p50_vs_embed_plus_query_p50": round(
                float(classify_p50 / (embed_p50 + query_p50)), 2),
            "batch_texts_per_s": round(batch_rate), "raw_batch_texts_per_s": round(raw_rate),
            "batch_vs_raw": round(batch_rate / raw_rate, 2),
            "batch_stage_ms_per_text": stages}


def stage_costs(pipeline: Pipeline, embedder: Embedder, batch: list[str],
                options: ClassifyOptions) -> dict[str, float]:
    """Where batch classify spends its time, per text: the whole call and each stage on its own,
    timed round by round (so a load change hits every figure alike), the best round of each;
    and the whole against the floor (embedding plus Chroma's own query)."""
    from retrieval.neighbours import LabelTable, Neighbours, fuse

    retriever, index = pipeline.retriever, pipeline.retriever.index
    table = LabelTable.of(index.labels)
    allowed = table.mask(retriever.assignable())
    vectors = index.embedder.embed(batch)
    found = index.nearest_ids(vectors, retriever.neighbours)
    work: dict[str, Callable[[], object]] = {
        "total": lambda: pipeline.classify_batch(batch, options),
        "raw_embed": lambda: embedder.embed(batch),
        "embed": lambda: index.embedder.embed(batch),
        "chroma_query": lambda: index.nearest_ids(vectors, retriever.neighbours),
        "fuse": lambda: fuse(Neighbours.of(*found, table), retriever.aggregation,
                             pipeline.top_k, allowed),
    }
    best = {name: math.inf for name in work}
    for _ in range(REPEATS):
        for name, step in work.items():
            started = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - started)
    timings = {name: round(seconds * 1000 / len(batch), 3) for name, seconds in best.items()}
    # What the stages timed alone leave of the whole call: results, checks, the call itself.
    timings["rest"] = round(timings["total"] - timings["embed"] - timings["chroma_query"]
                            - timings["fuse"], 3)
    timings["total_vs_embed_plus_query"] = round(
        timings["total"] / (timings["embed"] + timings["chroma_query"]), 2)
    return timings


def phase_http(args: dict) -> dict:
    """The HTTP API beside the in-process pipeline on the same texts, call after call: one
    client's p50 and the overhead per request in ms, then 16 clients' texts/s against one
    in-process batch (best of REPEATS interleaved rounds each)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from service.factory import build_pipeline
    from service.pipeline import ClassifyOptions

    backend = args.get("serve_backend") or args["backend"]
    pipeline = build_pipeline(settings_for(Path(args["db"]), backend))
    options = ClassifyOptions(mode="retrieval")
    singles, batch = query_texts(args)
    with api_server(Path(args["db"]), backend) as url, httpx.Client(base_url=url) as client:
        def over_http(text: str, http: httpx.Client = client) -> None:
            answer = http.post("/v1/classify", json={"text": text, "mode": "retrieval"})
            answer.raise_for_status()

        for text in singles[:20]:
            pipeline.classify(text, options)
            over_http(text)
        local_ms, http_ms = [], []
        for n, text in enumerate(singles):
            steps = [(local_ms, lambda t=text: pipeline.classify(t, options)),
                     (http_ms, lambda t=text: over_http(t))]
            for times, step in steps[::-1] if n % 2 else steps:
                times.append(timed_ms(step))
        clients = [httpx.Client(base_url=url) for _ in range(HTTP_CLIENTS)]

        def sixteen_clients() -> None:
            with ThreadPoolExecutor(HTTP_CLIENTS) as pool:
                shares = [batch[i::HTTP_CLIENTS] for i in range(HTTP_CLIENTS)]
                list(pool.map(lambda c, share: [over_http(t, c) for t in share], clients, shares))

        best = {"in_process": math.inf, "http": math.inf}
        for _ in range(REPEATS):
            best["in_process"] = min(best["in_process"],
                                     timed_ms(lambda: pipeline.classify_batch(batch, options)))
            best["http"] = min(best["http"], timed_ms(sixteen_clients))
        for http in clients:
            http.close()
    local_p50, http_p50 = np.percentile(local_ms, 50), np.percentile(http_ms, 50)
    return {"http_classify_ms": percentiles(http_ms),
            "in_process_classify_ms": percentiles(local_ms),
            "http_overhead_ms_p50": round(float(http_p50 - local_p50), 2),
            "http_p50_vs_in_process_p50": round(float(http_p50 / local_p50), 2),
            f"http_{HTTP_CLIENTS}_clients_texts_per_s": round(len(batch) * 1000 / best["http"]),
            "in_process_batch_texts_per_s": round(len(batch) * 1000 / best["in_process"]),
            f"http_{HTTP_CLIENTS}_clients_vs_in_process_batch": round(
                best["in_process"] / best["http"], 2)}


def timed_ms(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return (time.perf_counter() - started) * 1000


@contextmanager
def api_server(db: Path, backend: str) -> Iterator[str]:
    """`labelrank serve` on a free loopback port, retrieval only, away from any .env."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABELRANK_", "OPENAI_"))}
    env |= {"LABELRANK_EMBEDDER_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as cwd, (Path(cwd) / "serve.log").open("w+") as log:
        server = subprocess.Popen(  # its access log would drown the figures: kept aside
            [sys.executable, "-c", "from eval.cli import main; main()", "serve", "--db", str(db),
             "--port", str(port)], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 600
            while not _ready(httpx, url):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"labelrank serve did not get ready (exit {server.poll()}):"
                                     f"\n{log.read()[-2000:]}")
                time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=60)


def _ready(httpx, url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def phase_recall(args: dict) -> dict:
    """HNSW recall@100 against exact search over every stored vector, on sample queries."""
    from service.factory import build_embedder, build_index

    settings = settings_for(Path(args["db"]), args["backend"])
    index = build_index(settings)
    stored = list(index.iter_vectors())
    vectors = np.vstack([row.vector for row in stored])
    queries = sentences(QUERY_SOURCES)[:200]
    embedded = build_embedder(settings).embed(queries)
    # Repeated texts give exact ties, so a hit counts when it is at least as near as the exact
    # 100th neighbour (whichever copy of a tied vector either search returned).
    exact_100th = -np.sort(-(embedded @ vectors.T), axis=1)[:, 99]
    _, found = index.nearest_ids(embedded, 100)
    recall = [np.mean(1.0 - np.asarray(dists) >= cut - 1e-5)
              for dists, cut in zip(found, exact_100th, strict=True)]
    return {"hnsw_recall_at_100": round(float(np.mean(recall)), 4)}


PHASES = {"build": phase_build, "raw": phase_raw, "serve": phase_serve, "http": phase_http,
          "recall": phase_recall}


def run_phase(name: str, args: dict) -> dict:
    """Run one phase in a fresh process; add its peak RSS."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        child = subprocess.Popen([sys.executable, __file__, "--phase", name,
                                  "--phase-args", json.dumps(args), "--phase-out", out.name])
        _, status, usage = os.wait4(child.pid, 0)
        if status != 0:
            raise SystemExit(f"phase {name} failed (status {status})")
        result = json.loads(Path(out.name).read_text())
    # ru_maxrss is in KiB on Linux; it covers the phase's own worker processes too.
    result[f"{name}_peak_rss_gb"] = round(usage.ru_maxrss / 2**20, 2)
    return result


def disk_gb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**30, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[3000])
    parser.add_argument("--examples-per-label", type=int, default=20)
    parser.add_argument("--backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--serve-backend", choices=["torch", "onnx", "onnx-int8"],
                        help="Serve (and query) with another backend than the build's.")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "lr-scale")
    parser.add_argument("--queries", type=int, default=300, help="Single-text classify calls.")
    parser.add_argument("--batch", type=int, default=2000, help="Texts in the batch classify.")
    parser.add_argument("--recall", action="store_true", help="Also measure HNSW recall.")
    parser.add_argument("--http", action="store_true",
                        help="Also measure the HTTP API (labelrank serve) beside in-process.")
    parser.add_argument("--reuse", action="store_true", help="Keep an existing index.")
    parser.add_argument("--skip-raw", action="store_true", help="Skip the raw build baseline.")
    parser.add_argument("--json", type=Path, help="Also write all figures here.")
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--phase-args", help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.phase:
        result = PHASES[opts.phase](json.loads(opts.phase_args))
        Path(opts.phase_out).write_text(json.dumps(result))
        return

    rows = []
    for n_labels in opts.labels:
        db = opts.root / f"{n_labels}x{opts.examples_per_label}-{opts.backend}"
        if db.exists() and not opts.reuse:
            shutil.rmtree(db)
        args = {"labels": n_labels, "per_label": opts.examples_per_label, "db": str(db),
                "backend": opts.backend, "serve_backend": opts.serve_backend,
                "queries": opts.queries, "batch": opts.batch}
        row = {"requested_labels": n_labels, "backend": opts.backend,
               "serve_backend": opts.serve_backend or opts.backend, "cpus": os.cpu_count()}
        for phase in ["build", "raw", "serve", "http", "recall"]:
            if ((phase == "recall" and not opts.recall) or (phase == "raw" and opts.skip_raw)
                    or (phase == "http" and not opts.http)):
                continue
            if phase == "build" and opts.reuse and db.exists():
                continue
            row |= run_phase(phase, args)
            print(f"  {n_labels} labels, {phase}: {json.dumps(row)}", file=sys.stderr, flush=True)
        row["disk_gb"] = disk_gb(db)
        if "raw_build_texts_per_s" in row and "build_texts_per_s" in row:
            row["build_vs_raw"] = round(row["build_texts_per_s"] / row["raw_build_texts_per_s"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
