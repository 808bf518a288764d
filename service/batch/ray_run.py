"""Batch labeling on Ray: shards of the input, workers that hold the model, each record once.

Ray places the workers, restarts a dead one and retries its shard (`max_restarts`,
`max_task_retries`), and `ActorPool` hands out shards. Exactly once is ours: a shard is written
only to its own part file, by the one process holding its lock, and a retried or rerun shard
skips the records already in its part (the per-record resume of a one-file run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prompts.selector import Usage
from retrieval.errors import LabelrankError, require_extra
from service.batch.io import STDIN, InvalidInputError
from service.batch.manifest import ShardedOutput, file_lock, open_output
from service.batch.report import Progress, Stats
from service.batch.run import DEFAULTS, BatchOptions
from service.batch.shard_worker import ShardWorker
from service.batch.shared_answers import RemoteStore, start_answer_store
from service.batch.sidecar import run_config
from service.engine import Engine
from service.settings import Settings

POLL_S = 1.0


class ShardFailedError(LabelrankError):
    code = "shard_failed"
    status = 500


class WorkerCountError(LabelrankError):
    code = "invalid_workers"
    status = 422


class RayUnavailableError(LabelrankError):
    code = "ray_unavailable"
    status = 503


@dataclass(frozen=True)
class RayOptions:
    """Where the workers run and how the input is cut."""

    address: str | None = None  # None: RAY_ADDRESS if set, else a local Ray for this run
    workers: int | None = None  # None: the cluster's CPUs / cpus_per_worker
    cpus_per_worker: int = 1
    shard_size: int = 10_000
    task_retries: int = 3
    # Ray starts workers at niceness 15: behind any other work on the cores (measured: 1.0-1.5
    # records/s against 40 for the local engine beside a classify and a fit). None keeps it.
    worker_niceness: int | None = None


@dataclass
class RayRun:
    """What a run did: counts over the whole output, its workers, and where the time went."""

    stats: Stats
    workers: list[dict[str, Any]] = field(default_factory=list)
    startup_s: float = 0.0  # Ray up, workers placed, models loaded, index copies opened
    labeling_s: float = 0.0


def run_batch_ray(engine: Engine, source: str, output: Path, options: BatchOptions = DEFAULTS,
                  ray_options: RayOptions = RayOptions(), progress_every_s: float = 10.0,
                  tty: bool | None = None) -> RayRun:
    """Label every input record not yet in the output directory, on Ray workers."""
    require_extra("ray", "ray")
    if source == STDIN:
        raise InvalidInputError("--engine ray reads files or a directory, not stdin")
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"{output} is a file; --engine ray writes a directory",
                                path=str(output))
    mode = engine.pipeline.resolve_mode(options.mode)  # fails now, not on the workers
    config = run_config(engine, mode, "ray", options.text_field, options.id_field)
    with file_lock(output / ".lock", what=str(output)):
        out = open_output(output, Path(source).resolve(), options.input_format,
                          ray_options.shard_size, config, options.force)
        stats = Stats(total=out.total)
        for earlier in out.done.values():
            stats.add(earlier)
        stats.previous, stats.written = stats.records, 0
        stats.cached_answers, stats.cached_usage = 0, Usage()  # this run's, as for one file
        run = RayRun(stats)
        todo = [s for s in out.shards if s.index not in out.done]
        if todo:
            with Progress(stats, progress_every_s, tty) as progress:
                _label_on_ray(engine.settings, config, options, ray_options, out, todo,
                              progress, run)
    return run


def _label_on_ray(settings: Settings, config: dict, options: BatchOptions,
                  ray_options: RayOptions, out: ShardedOutput, todo: list, progress: Progress,
                  run: RayRun) -> None:
    import ray
    from ray.util.actor_pool import ActorPool

    started = time.monotonic()
    own_session = not ray.is_initialized()
    if own_session:
        try:
            ray.init(address=ray_options.address, include_dashboard=False,
                     logging_level=logging.WARNING, _system_config=_niceness_config(ray_options))
        except ConnectionError as exc:
            raise RayUnavailableError(
                f"no Ray cluster at {ray_options.address} ({exc}); start one with `ray start "
                "--head`, or leave out --address for a Ray of this run's own",
                address=ray_options.address) from None
    actors: list = []
    try:
        count = worker_count(ray.cluster_resources().get("CPU", 1), ray_options, len(todo),
                             config["mode"], settings.llm_concurrency)
        remote = ray.remote(num_cpus=ray_options.cpus_per_worker, max_restarts=-1,
                            max_task_retries=ray_options.task_retries,
                            max_concurrency=2)(ShardWorker)  # 2: progress() answers mid-shard
        worker = worker_settings(settings, config["mode"], count, ray_options.cpus_per_worker)
        tag = secrets.token_hex(3)  # names for `ray list actors`, unique per run
        answers = None
        if config["mode"] == "llm" and options.cache_dir is not None:
            store = start_answer_store(ray, options.cache_dir, f"labelrank-answers-{tag}")
            actors.append(store)  # stopped with the workers
            answers = RemoteStore(store)
        workers = [remote.options(name=f"labelrank-batch-{tag}-{i}").remote(
            worker, config, options, ray_options.worker_niceness, answers) for i in range(count)]
        actors += workers
        places = _get(ray, [actor.start.remote() for actor in workers])
        run.startup_s = time.monotonic() - started
        _drain(ray, ActorPool(workers), workers, deque(todo), out, progress)
        run.labeling_s = time.monotonic() - started - run.startup_s
        rss = _get(ray, [actor.peak_rss_mb.remote() for actor in workers])
        run.workers = [{**place, "peak_rss_mb": mb} for place, mb in zip(places, rss,
                                                                          strict=True)]
    finally:
        for actor in actors:
            # A dead worker's index copy goes when the next worker on its node starts.
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(actor.close.remote(), timeout=30)
            ray.kill(actor)
        if own_session:
            ray.shutdown()


def _niceness_config(ray_options: RayOptions) -> dict[str, object] | None:
    """Ray's own setting for a Ray this run starts (a joined cluster keeps its `ray start`'s)."""
    if ray_options.worker_niceness is None or (ray_options.address
                                               or os.environ.get("RAY_ADDRESS")):
        return None
    return {"worker_niceness": ray_options.worker_niceness}


def _drain(ray: Any, pool: Any, actors: list, queue: deque, out: ShardedOutput,
           progress: Progress) -> None:
    """Keep every worker on a shard until none is left; record each finished shard."""
    failure: Exception | None = None
    live: dict[int, int] = {}

    def feed() -> None:
        while queue and failure is None and pool.has_free():
            pool.submit(lambda actor, shard: actor.label_shard.remote(shard, out.part(shard)),
                        queue.popleft())

    feed()
    while pool.has_next():
        try:
            index, shard_stats = pool.get_next_unordered(timeout=POLL_S)
        except TimeoutError:
            live = _in_flight(ray, actors)
            progress.unfinished(sum(live.values()))
            continue
        except ray.exceptions.RayError as exc:
            failure = failure or exc
            continue
        out.mark_done(out.shards[index], shard_stats)
        live.pop(index, None)
        progress.add(shard_stats)
        progress.unfinished(sum(live.values()))
        feed()
    if failure is not None:
        raise _reported(failure, f"{len(out.done)} of {len(out.shards)} shards are done and kept")


def _in_flight(ray: Any, actors: list) -> dict[int, int]:
    """Records written so far per running shard; workers being restarted are left out."""
    refs = [actor.progress.remote() for actor in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=POLL_S)
    live = {}
    for ref in ready:
        try:
            got = ray.get(ref)
        except ray.exceptions.RayError:
            continue
        if got is not None:
            live[got[0]] = got[1]
    return live


def _get(ray: Any, refs: list) -> list:
    """`ray.get` once every ref is ready, with a worker's labelrank error re-raised as itself."""
    ray.wait(refs, num_returns=len(refs))  # none left running when the actors are killed
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        raise _reported(exc) from None


def _reported(exc: Exception, kept: str = "the finished shards are kept") -> LabelrankError:
    """A worker's labelrank error as itself; anything else (a worker that died more often
    than its shard may be retried) as `shard_failed`."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, LabelrankError):
        return cause
    first = str(cause or exc).strip().splitlines()
    return ShardFailedError(
        f"a shard failed ({type(cause or exc).__name__}: {first[0] if first else ''}); {kept}: "
        "run the same command again to redo the rest")


def worker_count(cpus: float, ray_options: RayOptions, shards: int, mode: str,
                 llm_concurrency: int) -> int:
    """How many workers: as asked (if the cluster has the CPUs), else one per
    `cpus_per_worker` CPUs of the cluster; never more than shards to do, nor (in LLM mode) than
    the cluster-wide LLM concurrency."""
    asked, each = ray_options.workers, ray_options.cpus_per_worker
    if asked and asked * each > cpus:  # the extra workers would wait for CPUs forever
        raise WorkerCountError(f"{asked} workers of {each} CPUs need {asked * each} CPUs; the "
                               f"cluster has {cpus:g}", workers=asked, cpus=cpus)
    count = asked or max(1, int(cpus // each))
    if mode == "llm":
        if asked and asked > llm_concurrency:
            raise WorkerCountError(
                f"{asked} workers in LLM mode need LABELRANK_LLM_CONCURRENCY (--concurrency) "
                f"of at least {asked}: it bounds LLM calls across the whole cluster, and each "
                f"worker needs one", workers=asked, llm_concurrency=llm_concurrency)
        count = min(count, llm_concurrency)
    return max(1, min(count, shards))


def worker_settings(settings: Settings, mode: str, workers: int, cpus: int) -> Settings:
    """A worker's settings: its share of the LLM concurrency, one embedder thread per CPU."""
    updates: dict[str, object] = {"embed_threads": settings.embed_threads or cpus}
    if mode == "llm":
        updates["llm_concurrency"] = settings.llm_concurrency // workers
    return settings.model_copy(update=updates)
