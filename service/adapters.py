"""Parts that plug into the pipeline's protocols in place of the real ones, so a front end that
needs something other than a live answer still goes through `Pipeline.classify_batch`: a source
that records shortlists, one that replays them, a selector that only renders its prompt, and
the caches. The console, OpenAI batch files, batch labeling and eval all use these."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import retrieval
from prompts.answer_cache import CachedSelector, KeyValueStore, cache_key
from prompts.infer import InferringSelector
from prompts.infer_cache import CachedInferringSelector
from prompts.render import Option, RenderedPrompt
from prompts.selector import LLMSelector, Selection
from retrieval.fusion import Candidate
from retrieval.index import LabelIndex
from retrieval.retriever import Retriever
from service.pipeline import CandidateSource, Selector

Renderer = Callable[[str, Sequence[Option], int], RenderedPrompt]


class Recording:
    """A CandidateSource that keeps the shortlists it hands out, keyed by text."""

    def __init__(self, inner: CandidateSource) -> None:
        self.inner = inner
        self.shortlists: dict[str, list[Candidate]] = {}

    @property
    def index(self) -> LabelIndex:
        return self.inner.index

    def candidates(self, texts: Sequence[str], top_k: int, within: frozenset[str] | None = None,
                   phrases: Sequence[Sequence[str]] | None = None) -> list[list[Candidate]]:
        """The inner source's shortlists, remembered."""
        extra: dict[str, object] = {} if within is None else {"within": within}
        if phrases:
            extra["phrases"] = phrases
        found = self.inner.candidates(texts, top_k, **extra)
        self.shortlists.update(zip(texts, found, strict=True))
        return found

    def describe(self) -> str:
        """The wrapped source's method."""
        return self.inner.describe()


class Replaying:
    """A CandidateSource over shortlists saved earlier, looked up by key: it searches nothing."""

    def __init__(self, index: LabelIndex, shortlists: Mapping[str, list[Candidate]]) -> None:
        self.index = index
        self.shortlists = shortlists

    def candidates(self, texts: Sequence[str], top_k: int, within: frozenset[str] | None = None,
                   phrases: Sequence[Sequence[str]] | None = None) -> list[list[Candidate]]:
        """The saved shortlist of each key (empty for a key never saved)."""
        return [self.shortlists.get(key, []) for key in texts]

    def describe(self) -> str:
        """Shortlists come from a recording or a file, not from a search."""
        return "saved shortlists"


class PromptOnly:
    """A Selector that renders the exact prompt it would send, keeps it by text, and chooses
    nothing: no LLM call."""

    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer
        self.prompts: dict[str, RenderedPrompt] = {}
        self._lock = threading.Lock()

    def select(self, text: str, options: Sequence[Option], max_labels: int) -> Selection:
        """Keep the rendered prompt; answer with an empty choice."""
        rendered = self.renderer(text, options, max_labels)
        with self._lock:  # same text, same candidates, same prompt: keyed by text is enough
            self.prompts[text] = rendered
        return Selection.empty()


def with_evidence(source: CandidateSource) -> CandidateSource:
    """The same retriever, reading the matched example texts (it skips them when no LLM needs
    them); any other source as it is."""
    if not isinstance(source, Retriever) or source.evidence:
        return source
    reading = copy.copy(source)
    reading.evidence = True
    return reading


def cached_answers(selector: Selector | None, store: KeyValueStore) -> CachedSelector | None:
    """The LLM selector with its answers (the infer step's too) remembered in `store`; None
    for any other selector (nothing to cache)."""
    if isinstance(selector, InferringSelector):
        return CachedInferringSelector(selector, store)
    return CachedSelector(selector, store) if isinstance(selector, LLMSelector) else None


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

    def __init__(self, retriever: Retriever, store: KeyValueStore) -> None:
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

    def candidates(self, texts: Sequence[str], top_k: int, within: frozenset[str] | None = None,
                   phrases: Sequence[Sequence[str]] | None = None) -> list[list[Candidate]]:
        """Cached shortlists (per text and its phrases); only the misses go through the
        embedder and Chroma."""
        scope = (self.index.fingerprint(), self.inner.describe(), retrieval_code_hash(),
                 self.inner.neighbours, top_k, _digest(within), self.inner.evidence,
                 self.index.embedder.backend)
        own = list(phrases) if phrases else [()] * len(texts)
        # A text without phrases keeps the key it always had, so earlier caches still answer.
        keys = [cache_key("retrieval", scope, text, *([list(more)] if more else []))
                for text, more in zip(texts, own, strict=True)]
        found = self.store.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        fresh = (self.inner.candidates([texts[i] for i in missing], top_k, within,
                                       [own[i] for i in missing] if phrases else None)
                 if missing else [])
        new = {keys[i]: json.dumps([c.to_json() for c in cands])
               for i, cands in zip(missing, fresh, strict=True)}
        self.store.put_many(new)
        found.update(new)
        return [[Candidate.from_json(c) for c in json.loads(found[key])] for key in keys]
