"""Caches for iteration: retrieval per (text, index, settings), LLM answers per exact request."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import retrieval
from prompts.render import Option
from prompts.selector import LLMSelector, Selection, Usage
from retrieval.fusion import Candidate
from retrieval.index import LabelIndex
from retrieval.retriever import Retriever


class Store:
    """A tiny thread-safe key-value store in SQLite."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

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


@lru_cache(maxsize=1)
def retrieval_code_hash() -> str:
    """Hash of the retrieval package's source: a change in scoring code invalidates the cache."""
    digest = hashlib.sha256()
    for path in sorted(Path(retrieval.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _digest(ids: frozenset[str] | None) -> str | None:
    return None if ids is None else hashlib.sha256("\x1f".join(sorted(ids)).encode()).hexdigest()


class CachedRetriever:
    """A Retriever whose shortlists are remembered per (text, index fingerprint, settings)."""

    def __init__(self, retriever: Retriever, store: Store) -> None:
        self.inner = retriever
        self.store = store

    @property
    def index(self) -> LabelIndex:
        return self.inner.index

    @property
    def neighbours(self) -> int:
        return self.inner.neighbours

    @property
    def evidence(self) -> bool:
        return self.inner.evidence

    def describe(self) -> str:
        """The wrapped retriever's method."""
        return self.inner.describe()

    def candidates(self, texts: Sequence[str], top_k: int,
                   within: frozenset[str] | None = None) -> list[list[Candidate]]:
        """Cached shortlists; only the misses go through the embedder and Chroma."""
        scope = (self.index.fingerprint(), self.inner.describe(), retrieval_code_hash(),
                 self.inner.neighbours, top_k, _digest(within), self.inner.evidence,
                 self.index.embedder.backend)
        keys = [_key("retrieval", scope, text) for text in texts]
        found = self.store.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        fresh = (self.inner.candidates([texts[i] for i in missing], top_k, within)
                 if missing else [])
        new = {keys[i]: json.dumps([c.to_json() for c in cands])
               for i, cands in zip(missing, fresh, strict=True)}
        self.store.put_many(new)
        found.update(new)
        return [[Candidate.from_json(c) for c in json.loads(found[key])] for key in keys]


class CachedSelector:
    """An LLMSelector whose answers are remembered per (endpoint, exact request body)."""

    def __init__(self, selector: LLMSelector, store: Store) -> None:
        self.inner = selector
        self.store = store

    def select(self, text: str, options: Sequence[Option], max_labels: int) -> Selection:
        """A cached answer, or a real call whose successful answer is then cached."""
        rendered = self.inner.prompt(text, options, max_labels)
        key = _key("llm", str(self.inner.client.base_url), self.inner.request(rendered),
                   rendered.slots, max_labels)
        hit = self.store.get_many([key])
        if hit:
            data = json.loads(hit[key])
            return Selection(**{**data, "usage": Usage(**data["usage"]), "attempts": 0})
        selection = self.inner.select(text, options, max_labels)
        self.store.put_many({key: json.dumps({**asdict(selection),
                                              "usage": selection.usage.model_dump()})})
        return selection
