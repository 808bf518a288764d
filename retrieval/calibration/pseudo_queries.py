"""A dev set made from the catalog itself: labels' own texts as queries, held out of the index."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from retrieval.calibration.held_out import HeldOutText
from retrieval.catalog import Label
from retrieval.index import LabelIndex, label_texts, vector_id

# Share of pseudo-texts composed of two or three labels: single-label queries cannot teach
# multi-label behaviour (sub-queries, label limits).
COMPOSED_SHARE = 0.4
FRAGMENT_WORDS = 8  # a description or a long example joins a composed text as its first words
TERSE_WORDS = 4
# Share of pseudo-queries that name a label taken out of the catalog whole: out-of-scope
# texts, so that the threshold learns when to answer none (real traffic has some).
NONE_SHARE = 0.15
_CLAUSE = re.compile(r"[.;:,()]\s")


@dataclass
class PseudoSet:
    """Pseudo-queries, their gold labels and the label texts they were made of (to hold out)."""

    texts: list[str] = field(default_factory=list)
    gold: list[list[str]] = field(default_factory=list)
    held_out: list[list[HeldOutText]] = field(default_factory=list)  # per pseudo-query
    kinds: list[str] = field(default_factory=list)  # example, name, ..., composed or none
    # Labels taken out of the catalog whole (`none` queries name them): not assignable in the
    # held-out view, so a text about one of them has no label there.
    out_of_scope: list[str] = field(default_factory=list)

    def add(self, text: str, gold: list[str], used: list[HeldOutText], kind: str) -> None:
        """One pseudo-query of this kind."""
        self.texts.append(text)
        self.gold.append(gold)
        self.held_out.append(used)
        self.kinds.append(kind)

    @property
    def composition(self) -> dict[str, int]:
        """How many pseudo-queries of each kind."""
        return {kind: self.kinds.count(kind) for kind in sorted(set(self.kinds))}

    def all_held_out(self) -> list[HeldOutText]:
        """Every label text any pseudo-query was made of."""
        return [text for texts in self.held_out for text in texts]

    def describe(self) -> dict[str, object]:
        """Size and composition, as saved in the calibration record."""
        return {"n": len(self.texts), "composition": self.composition}


class _Texts:
    """Each label's texts not yet held out, read once; a label always keeps one in the index."""

    def __init__(self, labels: Mapping[str, Label],
                 examples_of: Callable[[str], Sequence[str]], rng: random.Random) -> None:
        self.labels, self.examples_of, self.rng = labels, examples_of, rng
        self.left: dict[str, list[tuple[str, str]]] = {}

    def take_whole(self, label_id: str) -> tuple[str, str] | None:
        """A (kind, text) of a label no other pseudo-query has touched, as `take` picks it;
        the label gives nothing more after this."""
        if label_id in self.left:
            return None
        left = self._read(label_id)
        self.left[label_id] = []
        return self.rng.choice(_preferred(left)) if left else None

    def _read(self, label_id: str) -> list[tuple[str, str]]:
        if label_id not in self.left:
            label = replace(self.labels[label_id], examples=tuple(self.examples_of(label_id)))
            self.left[label_id] = label_texts(label)
        return self.left[label_id]

    def take(self, label_id: str, terse: bool = False) -> tuple[str, str] | None:
        """A (kind, text) of the label to hold out: an example when it has several, else any
        of its texts (`terse`: a short one if it has any); None when it has one left."""
        left = self._read(label_id)
        if len(left) < 2:
            return None
        choices = _preferred(left)
        if terse:
            # Texts name a label in a few words ("django, postgresql and redis"), not with
            # its description.
            choices = [t for t in choices if len(t[1].split()) <= TERSE_WORDS] or choices
        chosen = self.rng.choice(choices)
        left.remove(chosen)
        return chosen


def _preferred(left: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The texts to pick a pseudo-query from: the examples when there are several, else all."""
    examples = [t for t in left if t[0] == "example"]
    return examples if len(examples) >= 2 else left


def build_pseudo_set(labels: Mapping[str, Label], examples_of: Callable[[str], Sequence[str]],
                     size: int, seed: int = 0,
                     composed_share: float = COMPOSED_SHARE) -> PseudoSet:
    """Up to `size` pseudo-queries from a random sample of assignable labels: held-out examples,
    aliases, names and descriptions as queries for their label, pieces of two or three labels
    joined into one text with all of them as gold (`composed_share` of all), and texts of
    labels taken out whole, with no gold. `examples_of` is read per sampled label only, so a
    30,000-label catalog costs a few hundred reads."""
    rng = random.Random(seed)
    order = sorted(lid for lid, label in labels.items() if label.assignable)
    rng.shuffle(order)
    texts = _Texts(labels, examples_of, rng)
    pseudo = PseudoSet()
    if not order:
        return pseudo
    share = composed_share if len(order) > 1 else 0.0
    none_share = NONE_SHARE if len(order) > 1 else 0.0
    cursor, composed, none = _Cursor(order), 0, 0
    while len(pseudo.texts) < size and cursor.going():
        # Interleaved, so that a small catalog's labels still have texts left to compose.
        if composed < share * (len(pseudo.texts) + 1) and _compose(pseudo, texts, cursor, rng):
            composed += 1
            continue
        label_id = cursor.next()
        if none < none_share * (len(pseudo.texts) + 1) and (whole := texts.take_whole(label_id)):
            pseudo.add(whole[1], [], [(label_id, *whole)], "none")
            pseudo.out_of_scope.append(label_id)
            cursor.progress()
            none += 1
            continue
        taken = texts.take(label_id)
        if taken:
            pseudo.add(taken[1], [label_id], [(label_id, *taken)], taken[0])
            cursor.progress()
    return pseudo


def _compose(pseudo: PseudoSet, texts: _Texts, cursor: _Cursor, rng: random.Random) -> bool:
    """Add one text made of short pieces of two or three labels; False when too few labels
    had a text left (what was taken goes back)."""
    wanted = rng.choice((2, 3))
    parts: dict[str, tuple[str, str]] = {}
    for _ in range(wanted * 2):  # a few tries to find labels with a text left
        label_id = cursor.next()
        taken = None if label_id in parts else texts.take(label_id, terse=True)
        if taken:
            parts[label_id] = taken
        if len(parts) == wanted:
            break
    if len(parts) < 2:
        for label_id, taken in parts.items():
            texts.left[label_id].append(taken)
        return False
    pseudo.add(join([fragment(text) for _, text in parts.values()]), list(parts),
               [(lid, kind, text) for lid, (kind, text) in parts.items()], "composed")
    cursor.progress()
    return True


class _Cursor:
    """Cycles through the labels until a whole round adds nothing."""

    def __init__(self, order: list[str]) -> None:
        self.order, self.position, self.idle = order, 0, 0

    def next(self) -> str:
        self.idle += 1
        label_id = self.order[self.position % len(self.order)]
        self.position += 1
        return label_id

    def progress(self) -> None:
        self.idle = 0

    def going(self) -> bool:
        return self.idle <= 2 * len(self.order)


def add_copies(pseudo: PseudoSet, index: LabelIndex, depth: int = 10) -> None:
    """The same text may be stored under several labels (a multi-label example once per label,
    an alias two labels share): those labels are gold for a pseudo-query made of it too, and
    their copies are held out as well. Copies are found among each held-out text's `depth`
    nearest stored vectors."""
    flat = [(q, text) for q, texts in enumerate(pseudo.held_out) for text in texts]
    stored = index.embeddings([vector_id(*text) for _, text in flat])
    found = [(q, text, stored[vector_id(*text)]) for q, text in flat
             if vector_id(*text) in stored]
    if not found:
        return
    neighbours = index.search(np.stack([v for _, _, v in found]), depth, with_texts=True)
    for (q, (label_id, _, text), _), hits in zip(found, neighbours, strict=True):
        for hit in hits:
            if hit.label_id != label_id and hit.text.casefold() == text.casefold():
                pseudo.held_out[q].append((hit.label_id, hit.kind, hit.text))
                assignable = index.labels.get(hit.label_id)
                if assignable and assignable.assignable and hit.label_id not in pseudo.gold[q]:
                    pseudo.gold[q].append(hit.label_id)


def fragment(text: str) -> str:
    """A short piece of a label text: its first clause, at most FRAGMENT_WORDS words."""
    clause = _CLAUSE.split(text, maxsplit=1)[0]
    return " ".join(clause.split()[:FRAGMENT_WORDS]).rstrip(".;:,")


def join(pieces: Sequence[str]) -> str:
    """`a, b and c`."""
    return f"{', '.join(pieces[:-1])} and {pieces[-1]}"
