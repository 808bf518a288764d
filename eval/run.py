"""`labelrank eval`: run the pipeline over a gold set, score it, and save a run file."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from eval.datasets import Dataset, Example
from eval.metrics import evaluate, is_single_label
from prompts.answer_cache import CACHE_DIR, Store
from retrieval.taxonomy import taxonomy_of
from service.adapters import CachedRetriever, cached_answers
from service.engine import Engine
from service.pipeline import ClassifyOptions, Mode, Pipeline
from service.pricing import token_cost
from service.results import ClassifyResult, Outcome
from service.settings import Settings

KS = (1, 3, 5, 10)
CHUNK = 256


@dataclass
class EvalConfig:
    """What to run: mode, shortlist size, caches."""

    mode: Mode = "retrieval"
    top_k: int | None = None
    cache_dir: Path | None = CACHE_DIR
    out_dir: Path = Path("eval/runs")
    label: str = ""
    extra: dict = field(default_factory=dict)


def run_eval(engine: Engine, dataset: Dataset, config: EvalConfig) -> dict:
    """Classify every text with `classify_batch`, compute metrics, return the run record."""
    pipeline, settings = engine.pipeline, engine.settings
    store = Store.in_dir(config.cache_dir) if config.cache_dir else None
    if store:
        pipeline = pipeline.with_parts(retriever=CachedRetriever(pipeline.retriever, store),
                                       selector=cached_answers(pipeline.selector, store))
    options = ClassifyOptions(mode=config.mode, top_k=config.top_k)
    texts = [ex.text for ex in dataset.examples]
    outcomes = []
    started = time.perf_counter()
    with tqdm(total=len(texts), unit="text", desc="eval", disable=None, leave=False) as bar:
        for start in range(0, len(texts), CHUNK):
            outcomes += pipeline.classify_batch(texts[start:start + CHUNK], options)
            bar.update(min(CHUNK, len(texts) - start))
    wall_s = time.perf_counter() - started
    return _record(settings, dataset, config, pipeline, outcomes, wall_s, store)


def save_run(run: dict, out_dir: Path) -> Path:
    """Write the run to a new file; an existing run is never overwritten."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    base = f"{run['dataset']['name'].replace('/', '-')}-{run['mode']}-{stamp}"
    for suffix in ["", *(f"-{i}" for i in range(2, 1000))]:
        path = out_dir / f"{base}{suffix}.json"
        try:
            with path.open("x", encoding="utf-8") as handle:
                json.dump(run, handle, ensure_ascii=False, indent=1)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"too many runs named {base} in {out_dir}")


def load_run(path: str | Path) -> dict:
    """Read a saved run."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass
class _Tally:
    """What the outcomes say, text by text and summed: rows, label lists, usage, failures."""

    rows: list[dict] = field(default_factory=list)
    predicted: list[list[str]] = field(default_factory=list)
    ranked: list[list[str]] = field(default_factory=list)
    in_scope_score: list[float] = field(default_factory=list)  # best candidate's similarity
    latencies: list[float] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("prompt_tokens", "completion_tokens", "llm_calls", "cached_llm"), 0))
    degraded: int = 0
    errors: int = 0


def _tally(examples: Sequence[Example], outcomes: Sequence[Outcome]) -> _Tally:
    """Each outcome as a run file row, with the label lists the metrics need."""
    tally = _Tally()
    for ex, outcome in zip(examples, outcomes, strict=True):
        row: dict = {"id": ex.id, "text": ex.text, "gold": list(ex.labels)}
        if isinstance(outcome, ClassifyResult):
            labels = [lab.id for lab in outcome.labels]
            cands = [c.id for c in outcome.candidates]
            tally.in_scope_score.append(max((c.similarity or 0.0 for c in outcome.candidates),
                                            default=-1.0))
            row.update(labels=labels, mode=outcome.mode, degraded=outcome.degraded,
                       reason=outcome.reason,
                       candidates=[[c.id, round(c.score, 4), round(c.similarity or 0, 4)]
                                   for c in outcome.candidates])
            tally.usage["prompt_tokens"] += outcome.usage.prompt_tokens
            tally.usage["completion_tokens"] += outcome.usage.completion_tokens
            tally.usage["llm_calls"] += outcome.llm_attempts
            tally.usage["cached_llm"] += outcome.mode == "llm" and outcome.llm_attempts == 0
            tally.degraded += outcome.degraded
            tally.latencies.append(outcome.latency_ms)
        else:
            labels, cands = [], []
            tally.in_scope_score.append(-1.0)
            row["error"] = outcome.error
            tally.errors += 1
        tally.predicted.append(labels)
        tally.ranked.append(cands)
        tally.rows.append(row)
    return tally


def _record(settings: Settings, dataset: Dataset, config: EvalConfig, pipeline: Pipeline,
            outcomes: list[Outcome], wall_s: float, store: Store | None) -> dict:
    """The run file: what ran, on what, with which settings, its metrics and every row."""
    tally = _tally(dataset.examples, outcomes)
    gold = [list(ex.labels) for ex in dataset.examples]
    top_k = config.top_k or settings.top_k
    taxonomy = taxonomy_of(pipeline.index.labels)
    branches = {label: taxonomy.branch(label, 0) for g in gold for label in g}
    metrics = evaluate(gold, tally.predicted, tally.ranked, ks=KS, candidate_k=top_k,
                       branches=branches, in_scope_score=tally.in_scope_score)
    selector = pipeline.selector
    template = getattr(getattr(selector, "inner", selector), "template", None)
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "label": config.label,
        "mode": config.mode,
        "dataset": {"name": dataset.name, "path": str(dataset.path), "sha256": dataset.sha256,
                    "n": len(dataset.examples), "single_label": is_single_label(gold)},
        "index": pipeline.index.fingerprint(),
        "settings": json.loads(settings.model_dump_json(exclude={"llm_api_key"})),
        "retrieval": {"aggregation": pipeline.retriever.describe(),
                      "top_k": top_k, "threshold": pipeline.threshold.__dict__},
        "prompt": {"task": template.task, "version": template.version,
                   "sha256": template.sha256} if template else None,
        "metrics": metrics,
        "totals": _totals(tally, settings, wall_s, store),
        "extra": config.extra,
        "predictions": tally.rows,
    }


def _totals(tally: _Tally, settings: Settings, wall_s: float, store: Store | None) -> dict:
    """Tokens, cost, failures, speed and cache use over the whole run."""
    usage = tally.usage
    return {**usage, "cost_usd": token_cost(usage["prompt_tokens"], usage["completion_tokens"],
                                            settings.llm_model, settings.llm_prices),
            "degraded": tally.degraded, "errors": tally.errors, "wall_s": round(wall_s, 2),
            "texts_per_s": round(len(tally.rows) / wall_s, 1) if wall_s else None,
            "latency_ms_p50": (round(statistics.median(tally.latencies), 2) if tally.latencies
                               else None),
            "cache_hits": store.hits if store else 0,
            "cache_misses": store.misses if store else 0}
