"""The LLM answer cache of a Ray run: the local run's SQLite store, owned by one actor.

Every worker reads and writes the cache through that actor, pinned to the driver's node, where
the cache directory is (`.labelrank-cache/`, shared with eval and the local batch). So there is
one cache for the whole cluster and one process writing it: workers on other nodes see the same
answers without a shared filesystem (SQLite's locks are not safe on network filesystems), and
no two writers meet. An LLM call takes hundreds of ms; the two calls to the actor around it,
about a millisecond each.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prompts.answer_cache import Store


class AnswerStore:
    """The actor's side: the cache directory's store, opened in this process only."""

    def __init__(self, cache_dir: str) -> None:
        self._store = Store.in_dir(Path(cache_dir))

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """Values of the keys that are present."""
        return self._store.get_many(keys)

    def put_many(self, items: dict[str, str]) -> None:
        """Store values (replacing any)."""
        self._store.put_many(items)

    def close(self) -> None:
        """Nothing to flush: every put is committed before it returns."""


class RemoteStore:
    """A worker's side: the store's two methods, each a call to the actor."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """Values of the keys that are present."""
        import ray

        return ray.get(self._actor.get_many.remote(list(keys)))

    def put_many(self, items: dict[str, str]) -> None:
        """Store values (replacing any); on disk when this returns."""
        import ray

        ray.get(self._actor.put_many.remote(items))


def start_answer_store(ray: Any, cache_dir: Path, name: str) -> Any:
    """The actor holding the cache in `cache_dir`, on this (the driver's) node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    remote = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(AnswerStore)
    return remote.options(name=name, scheduling_strategy=here).remote(str(cache_dir.resolve()))
