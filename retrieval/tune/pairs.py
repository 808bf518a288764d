"""Training rows for embedder tuning: (text, positive, hard negative mined from the index)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from tqdm import tqdm

from retrieval.catalog import Label
from retrieval.index import LabelIndex
from retrieval.iterables import chunks


@dataclass(frozen=True)
class Row:
    """One training triple and the labels it speaks for (to keep batches free of false
    negatives)."""

    anchor: str
    positive: str
    negative: str
    owners: frozenset[str]  # the anchor's gold labels
    negative_label: str
    kind: str  # "label" (positive is the label's name/description) or "text"
    mined: bool  # False: no usable index neighbour, a random other-label text stands in


@dataclass(frozen=True)
class Pair:
    """A text and a positive for it: a text of the label, or the label's own name/description."""

    anchor: str
    positive: str
    label_id: str
    kind: str  # "label" or "text"


def label_texts_of(label: Label) -> list[str]:
    """What a label is called in the index: name, aliases and description."""
    return [label.name, *label.aliases, *([label.description] if label.description else [])]


def make_pairs(texts_by_label: Mapping[str, Sequence[str]], labels: Mapping[str, Label],
               max_pairs: int | None, rng: random.Random) -> list[Pair]:
    """(text, label text) and (text, other text of the same label) for every labelled text."""
    pairs = []
    for label_id, texts in texts_by_label.items():
        names = label_texts_of(labels[label_id])
        for i, text in enumerate(texts):
            pairs.append(Pair(text, rng.choice(names), label_id, "label"))
            if len(texts) > 1:
                j = rng.randrange(len(texts) - 1)
                other = texts[j + (j >= i)]  # any position but this text's own
                if other != text:
                    pairs.append(Pair(text, other, label_id, "text"))
    rng.shuffle(pairs)
    return pairs[:max_pairs] if max_pairs else pairs


def mine_rows(pairs: Sequence[Pair], gold: Mapping[str, frozenset[str]], index: LabelIndex,
              neighbours: int, duplicate_similarity: float, rng: random.Random,
              batch: int = 512) -> list[Row]:
    """Attach to each pair the index's nearest text of another label that is not a
    near-duplicate of the anchor or the positive; a random one when none qualifies."""
    embed = index.embedder.embed
    positives = {p.positive for p in pairs}
    vec_of = dict(zip(positives, embed(sorted(positives)), strict=True))
    by_label: dict[str, list[str]] = {}
    for text, owners in gold.items():
        for label_id in owners:
            by_label.setdefault(label_id, []).append(text)
    fallback_labels = sorted(by_label)
    rows = []
    with tqdm(total=len(pairs), unit="pair", desc="mining hard negatives", disable=None,
              leave=False, mininterval=1.0) as bar:
        for chunk in chunks(pairs, batch):
            anchors = embed([p.anchor for p in chunk])
            hits_per = index.search(anchors, neighbours, with_vectors=True)
            for pair, anchor_vec, hits in zip(chunk, anchors, hits_per, strict=True):
                owners = gold[pair.anchor]
                skip = {pair.anchor.casefold(), pair.positive.casefold()}
                positive_vec = vec_of[pair.positive]
                found = next((h for h in hits if h.label_id not in owners
                              and h.text.casefold() not in skip and h.vector is not None
                              and float(h.vector @ anchor_vec) < duplicate_similarity
                              and float(h.vector @ positive_vec) < duplicate_similarity), None)
                if found is not None:
                    rows.append(Row(pair.anchor, pair.positive, found.text, owners,
                                    found.label_id, pair.kind, True))
                    continue
                others = [lid for lid in fallback_labels if lid not in owners] or fallback_labels
                label_id = rng.choice(others)
                rows.append(Row(pair.anchor, pair.positive, rng.choice(by_label[label_id]),
                                owners, label_id, pair.kind, False))
            bar.update(len(chunk))
    return rows


def distinct_label_batches(rows: Sequence[Row], order: Sequence[int],
                           batch_size: int) -> Iterator[list[int]]:
    """Batches in which no text is an unintended in-batch negative: no two anchors share a
    label, and no row's hard negative belongs to another row's anchor label."""
    pending = list(order)
    while pending:
        batch: list[int] = []
        owners: set[str] = set()
        negatives: set[str] = set()
        rest: list[int] = []
        for pos, idx in enumerate(pending):
            if len(batch) == batch_size:
                rest.extend(pending[pos:])
                break
            row = rows[idx]
            if (row.owners & owners or row.owners & negatives
                    or row.negative_label in owners):
                rest.append(idx)
                continue
            batch.append(idx)
            owners |= row.owners
            negatives.add(row.negative_label)
        yield batch
        pending = rest
