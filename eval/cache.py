"""The retrieval cache for iteration: shortlists per (text, index, settings). LLM answers per
exact request are cached below, in prompts/answer_cache.py, for batch labeling too."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import retrieval
from prompts.answer_cache import Store, cache_key
from retrieval.fusion import Candidate
from retrieval.index import LabelIndex
from retrieval.retriever import Retriever


@lru_cache(maxsize=1)
def retrieval_code_hash() -> str:
    """Hash of the retrieval package's source: a change in scoring code invalidates the cache."""
    digest = hashlib.sha256()
    for path in sorted(Path(retrieval.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


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
        keys = [cache_key("retrieval", scope, text) for text in texts]
        found = self.store.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        fresh = (self.inner.candidates([texts[i] for i in missing], top_k, within)
                 if missing else [])
        new = {keys[i]: json.dumps([c.to_json() for c in cands])
               for i, cands in zip(missing, fresh, strict=True)}
        self.store.put_many(new)
        found.update(new)
        return [[Candidate.from_json(c) for c in json.loads(found[key])] for key in keys]
