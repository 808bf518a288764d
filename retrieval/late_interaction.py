"""Late interaction: the text's token vectors against each candidate's name and alias tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from retrieval.catalog import Label
from retrieval.errors import LabelrankError
from retrieval.fusion import Candidate
from retrieval.index import LabelIndex
from retrieval.stages import Search, Shortlists

# "label": for each label token its best text token, averaged (a label is found when all its
# words are in the text, however long the text); "text": ColBERT's direction, each text token's
# best label token, averaged over the text's tokens.
Direction = Literal["label", "text"]


class TokenEmbedder(Protocol):
    """An embedder that also returns each text's token vectors (see OnnxEmbedder)."""

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]: ...


class TokenVectorsUnavailable(LabelrankError):
    """Raised when token matching is on but the embedder cannot return token vectors."""

    code = "token_vectors_unavailable"
    status = 400


def token_embedder(embedder: Any) -> TokenEmbedder:
    """The embedder, when it returns token vectors (calibration's memo does, remembered)."""
    if not hasattr(embedder, "embed_with_tokens"):
        raise TokenVectorsUnavailable(
            f"token matching needs token vectors, which the {embedder.backend!r} embedder "
            "does not return; use the onnx or torch backend or set token_match_weight to 0",
            backend=embedder.backend)
    return embedder


def label_phrases(label: Label) -> tuple[str, ...]:
    """The texts a label is matched by, token by token: its name and aliases, without repeats."""
    seen: set[str] = set()
    out = []
    for text in (label.name, *label.aliases):
        if text and text.casefold() not in seen:
            seen.add(text.casefold())
            out.append(text)
    return tuple(out)


@dataclass(frozen=True)
class LabelTokens:
    """One label's phrases (what it was computed from) and their token vectors, stacked; the
    phrases with tokens start at rows `starts` (empty: nothing to match)."""

    phrases: tuple[str, ...]
    matrix: np.ndarray
    starts: np.ndarray


class TokenCache:
    """Label-side token vectors, computed once per label's phrases and kept in memory."""

    def __init__(self) -> None:
        self._source: Mapping[str, Label] | None = None
        self._entries: dict[str, LabelTokens] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, labels: Mapping[str, Label], ids: Sequence[str],
            embedder: TokenEmbedder) -> dict[str, LabelTokens]:
        """The token vectors of these labels that have any (labels not in `labels` or without
        a phrase are left out), embedding the missing ones in one call."""
        if labels is not self._source:
            # The index swaps in a new labels dict on every change, so identity tells
            # staleness; then only labels whose phrases changed (or are gone) are dropped.
            self._entries = {lid: entry for lid, entry in self._entries.items()
                             if lid in labels and label_phrases(labels[lid]) == entry.phrases}
            self._source = labels
        missing = [lid for lid in dict.fromkeys(ids)
                   if lid not in self._entries and lid in labels]
        phrases = {lid: label_phrases(labels[lid]) for lid in missing}
        flat = [text for lid in missing for text in phrases[lid]]
        tokens = embedder.embed_with_tokens(flat)[1] if flat else []
        at = 0
        for lid in missing:
            own = [t for t in tokens[at:at + len(phrases[lid])] if len(t)]
            at += len(phrases[lid])
            # float16 halves the cache (all of ESCO: 43K phrases of ~5 tokens, 165 MB instead
            # of 330 MB); scores move by under 1e-3.
            matrix = (np.concatenate(own) if own else np.zeros((0, 1))).astype(np.float16)
            starts = np.cumsum([0, *(len(t) for t in own)])[:-1]
            self._entries[lid] = LabelTokens(phrases[lid], matrix, starts)
        return {lid: self._entries[lid] for lid in ids
                if lid in self._entries and len(self._entries[lid].starts)}


def max_sim(text_tokens: np.ndarray, labels: Sequence[LabelTokens],
            direction: Direction = "label") -> np.ndarray:
    """Each label's late-interaction score against the text's token vectors: its best
    phrase's."""
    if not labels or not len(text_tokens):
        return np.zeros(len(labels), dtype=np.float32)
    matrix = np.concatenate([t.matrix for t in labels]).astype(np.float32)
    offsets = np.cumsum([0, *(len(t.matrix) for t in labels)])[:-1]
    starts = np.concatenate([t.starts + o for t, o in zip(labels, offsets, strict=True)])
    firsts = np.cumsum([0, *(len(t.starts) for t in labels)])[:-1]
    sims = matrix @ text_tokens.T  # label tokens x text tokens
    if direction == "label":
        lengths = np.diff(np.r_[starts, len(matrix)])
        phrase = np.add.reduceat(sims.max(axis=1), starts) / lengths
    else:
        phrase = np.maximum.reduceat(sims, starts, axis=0).mean(axis=1)
    return np.maximum.reduceat(phrase, firsts)


class _TokenMatchSettings(Protocol):
    token_match_weight: float


class TokenMatchStage:
    """Mixes each candidate's score with its late-interaction score, by `weight`, and re-sorts."""

    needs_vectors = False
    rescores = False
    work_per_text: ClassVar[float] = 1e-3
    fields: ClassVar[tuple[str, ...]] = ("token_match_weight",)
    off: ClassVar[dict[str, object]] = {"token_match_weight": 0.0}
    rounds: ClassVar[tuple[tuple[str, ...], ...]] = (("token_match_weight",),)
    # It costs one more encoder pass per text (34 of its 41 ms per text on ESCO tech_valid):
    # it must win by more than dev-set noise. Without a margin, self-calibration on the demo
    # catalog took it for +0.004 f1_samples on pseudo-queries, and the 20 gold texts lost
    # 0.917 -> 0.850 with it.
    margin: ClassVar[float] = 0.005
    # One more encoder pass over the texts, and the shortlisted labels' phrases on first sight.
    sampled: ClassVar[bool] = True
    budgeted: ClassVar[bool] = True
    max_widen: ClassVar[int] = 1

    def __init__(self, weight: float, direction: Direction = "label", widen: int = 1) -> None:
        self.weight = weight
        self.direction = direction
        self.widen = widen  # rescore a pool this many times deeper, keep the best share
        self.cache = TokenCache()

    @classmethod
    def from_settings(cls, settings: _TokenMatchSettings) -> TokenMatchStage | None:
        """On when `token_match_weight` is above zero."""
        weight = getattr(settings, "token_match_weight", 0.0)
        return cls(weight) if weight else None

    @classmethod
    def space(cls, index: Any) -> dict[str, tuple[object, ...]]:
        """Weights tried by calibration."""
        return {"token_match_weight": (0.2, 0.35, 0.5)}

    def describe(self, method: str) -> str:
        """`method+tokens(w)` (`tokens-text(w)` in ColBERT's direction)."""
        name = "tokens" if self.direction == "label" else "tokens-text"
        deeper = f",x{self.widen}" if self.widen > 1 else ""
        return f"{method}+{name}({self.weight:g}{deeper})"

    def apply(self, index: LabelIndex, search: Search, pools: Shortlists | None,
              pool_k: int) -> Shortlists:
        """Score every pool's candidates by late interaction (one encoder pass over the texts,
        label phrases from the cache) and mix: (1 - w) x score + w x token score; the same
        for the similarity."""
        assert pools is not None, "the token-matching stage needs aggregated pools"
        keep = pool_k // self.widen
        if self.weight <= 0:
            return [pool[:keep] for pool in pools]
        embedder = token_embedder(index.embedder)
        text_tokens = embedder.embed_with_tokens(list(search.texts))[1]
        labels = index.labels
        shortlisted = list(dict.fromkeys(c.label_id for pool in pools for c in pool))
        entries = self.cache.get(labels, shortlisted, embedder)
        return [self._mix(pool, tokens, entries, keep)
                for pool, tokens in zip(pools, text_tokens, strict=True)]

    def _mix(self, pool: list[Candidate], text_tokens: np.ndarray,
             entries: Mapping[str, LabelTokens], keep: int) -> list[Candidate]:
        # A label without phrases, or a text without tokens, says nothing: left unchanged.
        matched = [c for c in pool if c.label_id in entries] if len(text_tokens) else []
        scores = max_sim(text_tokens, [entries[c.label_id] for c in matched], self.direction)
        token_score = dict(zip((c.label_id for c in matched), scores.tolist(), strict=True))
        w = self.weight
        mixed = [replace(c, score=(1 - w) * c.score + w * token_score[c.label_id],
                         similarity=(1 - w) * c.similarity + w * token_score[c.label_id])
                 if c.label_id in token_score else c for c in pool]
        mixed.sort(key=lambda c: (-c.score, c.label_id))
        return mixed[:keep]
