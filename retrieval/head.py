"""The learned head: one weight vector and bias per label, rescoring the candidate shortlist.

Retrieval scores a label by where its vectors sit (nearest example, reciprocal rank, prototype);
the head learns which directions tell labels apart, from the labels' example embeddings (CLINC150
valid halves, frozen MiniLM: logistic regression 96.4 in-scope against 89.7 for the nearest
example). Each label's weight lives in its label record's metadata, so a compaction copies it,
a deletion takes it along and a Chroma server holds it like any other row; the head's own facts
(when, which model, the fallback map) sit in the vectors collection's metadata.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from retrieval.index import LabelIndex
    from retrieval.stages import Search, Shortlists

Mode = Literal["ovr", "softmax"]
# Texts scored per matrix product: 64 x 30 candidates keeps it under 2,000 weight rows.
_CHUNK = 64
WEIGHT, BIAS, TRAINED_ON = "head_w", "head_b", "head_examples"  # label record metadata keys
EXAMPLES = "examples_hash"  # the record's current examples, as `examples_digest` gives them


def examples_digest(texts: Iterable[str]) -> str:
    """What a label's example texts are, as one short string (order and repeats ignored)."""
    return hashlib.sha1("\x1f".join(sorted(set(texts))).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HeadInfo:
    """The head's own facts: when, on which model, how it scores, how untrained labels map."""

    trained_at: str
    embedder: str
    dim: int
    mode: Mode
    scale: tuple[float, float]  # logit ~ scale[0] * similarity + scale[1], fitted on trained
    labels: int
    examples: int
    seconds: float
    epochs: int

    def to_json(self) -> str:
        """As stored in the vectors collection's metadata."""
        return json.dumps({**self.__dict__, "scale": list(self.scale)}, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> HeadInfo:
        """The inverse of `to_json`."""
        data = json.loads(raw)
        return cls(**{**data, "scale": tuple(data["scale"])})


@dataclass(frozen=True)
class HeadRow:
    """One label's trained weight, bias and the digest of the examples it was trained on."""

    weight: np.ndarray = field(repr=False)
    bias: float
    trained_on: str

    def fields(self) -> dict[str, str | float]:
        """As label record metadata."""
        raw = base64.b64encode(np.asarray(self.weight, dtype="<f4").tobytes()).decode()
        return {WEIGHT: raw, BIAS: float(self.bias), TRAINED_ON: self.trained_on}

    @classmethod
    def read(cls, meta: Mapping[str, object]) -> HeadRow | None:
        """The row in a record's metadata, or None."""
        raw = meta.get(WEIGHT)
        if not isinstance(raw, str):
            return None
        weight = np.frombuffer(base64.b64decode(raw), dtype="<f4").astype(np.float32)
        return cls(weight, float(meta.get(BIAS, 0.0)), str(meta.get(TRAINED_ON, "")))


@dataclass(frozen=True)
class HeadTable:
    """What the index keeps in memory per label: its head row (if any) and its current examples
    (digest, count). A new table on every write: identity tells the cached head it is stale."""

    rows: dict[str, HeadRow] = field(default_factory=dict)
    current: dict[str, tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def read(cls, records: Iterable[tuple[str, Mapping[str, object]]]) -> HeadTable:
        """From (label id, record metadata) pairs."""
        rows, current = {}, {}
        for label_id, meta in records:
            row = HeadRow.read(meta)
            if row is not None:
                rows[label_id] = row
            examples = int(meta.get("examples", 0) or 0)  # type: ignore[call-overload]
            # Records written before digests were kept: trust the row trained on them.
            digest = str(meta.get(EXAMPLES) or (row.trained_on if row else ""))
            current[label_id] = (digest, examples)
        return cls(rows, current)

    def updated(self, written: Iterable[tuple[str, str, int]],
                removed: Iterable[str] = ()) -> HeadTable:
        """After label writes: (id, examples digest, count) written, ids removed."""
        rows, current = dict(self.rows), dict(self.current)
        for label_id, digest, count in written:
            current[label_id] = (digest, count)
        for label_id in removed:
            rows.pop(label_id, None)
            current.pop(label_id, None)
        return HeadTable(rows, current)

    def trained(self, rows: Mapping[str, HeadRow]) -> HeadTable:
        """After a training saved these rows."""
        current = dict(self.current)
        for label_id, row in rows.items():
            if label_id in current and not current[label_id][0]:
                current[label_id] = (row.trained_on, current[label_id][1])
        return HeadTable({**self.rows, **rows}, current)

    def fields(self, label_id: str) -> dict[str, str | float]:
        """A label's head row as metadata, kept when its record is rewritten."""
        row = self.rows.get(label_id)
        return row.fields() if row else {}

    def has_examples(self) -> bool:
        """Whether any label has example texts."""
        return any(count for _, count in self.current.values())


@dataclass(frozen=True)
class HeadStatus:
    """How the assignable labels are scored: by a trained weight, or without one and why."""

    trained: int
    new: int  # examples, but no weight yet (added since training)
    stale: int  # a weight trained on other examples than the label has now
    no_examples: int


class LabelHead:
    """The head as it scores: the rows of the labels whose weight is fresh, and the map that
    puts any other label's retrieval similarity on the same logit scale."""

    def __init__(self, info: HeadInfo, table: HeadTable) -> None:
        self.info = info
        self.table = table
        fresh = sorted(lid for lid, row in table.rows.items()
                       if table.current.get(lid, ("", 0))[1]
                       and table.current[lid][0] == row.trained_on
                       and row.weight.shape == (info.dim,))
        self.row_of = {label_id: n for n, label_id in enumerate(fresh)}
        self.weights = (np.stack([table.rows[lid].weight for lid in fresh]) if fresh
                        else np.zeros((0, info.dim), dtype=np.float32))
        self.biases = np.array([table.rows[lid].bias for lid in fresh], dtype=np.float32)

    @classmethod
    def detached(cls, info: HeadInfo, rows: Mapping[str, HeadRow]) -> LabelHead:
        """A head held in memory only, every row fresh (calibration's, trained without its
        held-out texts)."""
        return cls(info, HeadTable(dict(rows), {lid: (row.trained_on, 1)
                                                for lid, row in rows.items()}))

    def logits(self, vectors: np.ndarray, label_ids: Sequence[str],
               similarities: np.ndarray | None = None) -> np.ndarray:
        """[texts x labels] logits of these labels only; a label without a fresh weight gets
        its retrieval similarity (same shape; NaN without it) mapped onto the logit scale."""
        rows = np.array([self.row_of.get(lid, -1) for lid in label_ids], dtype=np.int64)
        trained = rows >= 0
        out = np.full((len(vectors), len(label_ids)), np.nan, dtype=np.float32)
        if trained.any():
            picked = rows[trained]
            out[:, trained] = vectors @ self.weights[picked].T + self.biases[picked]
        if similarities is not None and not trained.all():
            a, c = self.info.scale
            out[:, ~trained] = a * similarities[:, ~trained] + c
        return out

    def probabilities(self, logits: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Per-label probabilities: one sigmoid per label (ovr), or a softmax over each row's
        shortlist (`valid` masks padding)."""
        if self.info.mode == "ovr":
            return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
        masked = np.where(valid if valid is not None else True, logits, -np.inf)
        top = np.max(masked, axis=1, keepdims=True)
        exp = np.exp(masked - np.where(np.isfinite(top), top, 0.0))
        return exp / np.maximum(exp.sum(axis=1, keepdims=True), 1e-30)

    def status(self, assignable: Iterable[str]) -> HeadStatus:
        """How many assignable labels are scored with and without a trained weight."""
        counts = {"trained": 0, "new": 0, "stale": 0, "no_examples": 0}
        for label_id in assignable:
            _, examples = self.table.current.get(label_id, ("", 0))
            row = self.table.rows.get(label_id)
            kind = ("no_examples" if not examples else "trained" if label_id in self.row_of
                    else "new" if row is None else "stale")
            counts[kind] += 1
        return HeadStatus(**counts)

    def describe(self, assignable: Iterable[str], weight: float) -> dict[str, object]:
        """The head's part of `labelrank info`."""
        status = self.status(assignable)
        return {"on": weight > 0 and status.trained > 0, "weight": weight,
                "trained_at": self.info.trained_at, "embedder": self.info.embedder,
                "mode": self.info.mode, "trained_labels": status.trained,
                "untrained": {"new": status.new, "stale": status.stale,
                              "no_examples": status.no_examples},
                "examples": self.info.examples, "seconds": self.info.seconds}


class _HeadSettings(Protocol):
    head_weight: float


@dataclass(frozen=True)
class HeadStage:
    """Reorders each pool by w x head probability + (1 - w) x retrieval similarity, written
    into both score and similarity (the threshold reads similarity, so "none" weighs both)."""

    weight: float = 0.5
    widen: int = 1
    needs_vectors: bool = False  # the texts' own vectors are in every Search
    rescores: bool = False
    work_per_text: ClassVar[float] = 0.2e-3
    # Its knobs, as retrieval.stages.StageKind describes them (for registry and calibration).
    fields: ClassVar[tuple[str, ...]] = ("head_weight",)
    off: ClassVar[dict[str, object]] = {"head_weight": 0.0}
    rounds: ClassVar[tuple[tuple[str, ...], ...]] = (("head_weight",),)
    margin: ClassVar[float] = 0.0
    sampled: ClassVar[bool] = False  # one matrix product per 64 texts: no slower than a search
    # What `index` trained for this catalog, three weights ranked on the search already made
    # (seconds): when the budget skipped it, NLU++'s default lost 8.6 points of f1.
    budgeted: ClassVar[bool] = False
    max_widen: ClassVar[int] = 1

    @classmethod
    def from_settings(cls, settings: _HeadSettings) -> HeadStage | None:
        """On when `head_weight` > 0 (it then still does nothing on an index without a head)."""
        return cls(settings.head_weight) if settings.head_weight > 0 else None

    @classmethod
    def space(cls, index: Any) -> dict[str, tuple[object, ...]]:
        """Weights worth trying, on an index that holds a head."""
        has_head = index.head() is not None
        return {"head_weight": (0.25, 0.5, 0.75, 1.0)} if has_head else {}

    def describe(self, method: str) -> str:
        """The method, then the head's weight in the mix."""
        return f"{method}+head(w={self.weight:g})"

    def apply(self, index: LabelIndex, search: Search, pools: Shortlists | None,
              pool_k: int) -> Shortlists:
        """Score each chunk of texts' pools with the head in one matrix product, reorder."""
        assert pools is not None, "the head rescores aggregated pools"
        head = index.head()
        if head is None:
            return pools
        vectors = np.asarray(search.vectors, dtype=np.float32)
        out: Shortlists = []
        for start in range(0, len(pools), _CHUNK):
            chunk = pools[start:start + _CHUNK]
            mixed = self._mixed(head, vectors[start:start + _CHUNK], chunk)
            for pool, scores in zip(chunk, mixed, strict=True):
                rescored = [replace(cand, score=s, similarity=s)
                            for cand, s in zip(pool, scores[:len(pool)].tolist(), strict=True)]
                rescored.sort(key=lambda cand: (-cand.score, cand.label_id))
                out.append(rescored[:pool_k])
        return out

    def _mixed(self, head: LabelHead, vectors: np.ndarray, pools: Shortlists) -> np.ndarray:
        """[texts x longest pool] combined scores (padding is zero)."""
        label_ids = sorted({c.label_id for pool in pools for c in pool})
        column = {label_id: n for n, label_id in enumerate(label_ids)}
        width = max((len(pool) for pool in pools), default=0)
        columns = np.zeros((len(pools), width), dtype=np.int64)
        valid = np.zeros((len(pools), width), dtype=bool)
        sims = np.zeros((len(pools), width), dtype=np.float32)
        for i, pool in enumerate(pools):
            columns[i, :len(pool)] = [column[c.label_id] for c in pool]
            valid[i, :len(pool)] = True
            sims[i, :len(pool)] = [c.similarity for c in pool]
        # Every label of the chunk against every text of it, then each text's own columns.
        own = np.take_along_axis(head.logits(vectors, label_ids), columns, axis=1)
        a, c = head.info.scale
        own = np.where(np.isnan(own), a * sims + c, own)
        probability = head.probabilities(own, valid)
        return np.where(valid, self.weight * probability + (1 - self.weight) * sims, 0.0)
