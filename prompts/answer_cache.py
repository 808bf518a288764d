"""LLM answers remembered per exact request, so a rerun pays only for requests that changed
(eval iterating on settings, a batch rerun with --force); plus the small store behind it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Protocol

from prompts.render import Option
from prompts.selector import DIALECTS, LLMSelector, ResponseFormat, Selection, Usage

# Where eval and batch labeling keep their caches unless told otherwise (`--no-cache`: none).
CACHE_DIR = Path(".labelrank-cache")


class KeyValueStore(Protocol):
    """Where cached answers live: this module's SQLite store, or a Ray actor in front of one."""

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """Values of the keys that are present."""

    def put_many(self, items: dict[str, str]) -> None:
        """Store values (replacing any)."""


class Store:
    """A tiny thread-safe key-value store in SQLite."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @classmethod
    def in_dir(cls, cache_dir: Path) -> Store:
        """The store of a cache directory (eval's shortlists and answers, batch's answers)."""
        return cls(cache_dir / "cache.sqlite")

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """Values of the keys that are present."""
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start:start + 500])
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(
                    f"SELECT key, value FROM kv WHERE key IN ({marks})", chunk).fetchall())
        self.hits += len(found)
        self.misses += len(set(keys)) - len(found)
        return found

    def put_many(self, items: dict[str, str]) -> None:
        """Store values (replacing any)."""
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", items.items())
            self._db.commit()


def cache_key(*parts: object) -> str:
    """A stable key for JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class CachedSelector:
    """An LLMSelector whose answers are remembered per (endpoint, exact request body)."""

    def __init__(self, selector: LLMSelector, store: KeyValueStore) -> None:
        self.inner = selector
        self.store = store
        self.hits = 0
        self.saved = Usage()  # tokens the cached answers cost when they were asked
        self._lock = threading.Lock()

    def select(self, text: str, options: Sequence[Option], max_labels: int) -> Selection:
        """A cached answer, or a real call whose successful answer is then cached."""
        rendered = self.inner.prompt(text, options, max_labels)
        key = self.key("llm", self.inner.request(rendered, self.first_dialect()),
                       rendered.slots, max_labels)
        if (record := self.recall(key)) is not None:
            return _stored_selection(record)
        selection = self.inner.select(text, options, max_labels)
        self.keep(key, {**asdict(selection), "usage": selection.usage.model_dump()})
        return selection

    def first_dialect(self) -> ResponseFormat:
        """The first dialect the configuration asks for, not the one learnt since: a new run
        (which starts from that dialect) finds what an earlier run stored."""
        configured = self.inner.config.response_format
        return DIALECTS[0] if configured == "auto" else configured

    def key(self, kind: str, body: dict, *parts: object) -> str:
        """The cache key of a request body (and what reading its answer depends on)."""
        return cache_key(kind, str(self.inner.client.base_url),
                         self.inner.config.response_format, body, *parts)

    def recall(self, key: str) -> dict | None:
        """The stored record of an answer, counted as a hit that saved the tokens it had cost;
        None when there is none."""
        hit = self.store.get_many([key])
        if not hit:
            return None
        record = json.loads(hit[key])
        with self._lock:
            self.hits += 1
            self.saved = self.saved + Usage(**record["usage"])
        return record

    def keep(self, key: str, record: dict) -> None:
        """Store a successful answer's record."""
        self.store.put_many({key: json.dumps(record)})


_SELECTION_FIELDS = frozenset(f.name for f in fields(Selection))


def _stored_selection(data: dict) -> Selection:
    """A cached answer as a Selection with no call made; keys an older release stored and
    Selection no longer has (prompt_tokens_estimate, dropped_options) are ignored."""
    kept = {k: v for k, v in data.items() if k in _SELECTION_FIELDS}
    return Selection(**{**kept, "usage": Usage(**data["usage"]), "attempts": 0})
