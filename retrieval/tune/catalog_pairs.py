"""Training pairs from a catalog's own texts: alias -> label, description -> label, and texts
composed of two or three labels -> each of them (for catalogs with few or no examples)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from retrieval.calibration.pseudo_queries import fragment, join
from retrieval.catalog import Label
from retrieval.tune.pairs import Pair

# Composed texts per alias/description pair (each gives 2-3 pairs): job ads and tickets name
# several labels in one sentence, and its pooled vector must stay near each of them.
COMPOSED_PER_PAIR = 0.25
TERSE_WORDS = 4  # a label joins a composed text by a short alias or name when it has one


def catalog_pairs(labels: Mapping[str, Label], label_ids: Sequence[str],
                  rng: random.Random) -> tuple[list[Pair], dict[str, frozenset[str]]]:
    """(pairs, gold): each alias and description of the given labels as an anchor for the
    label's name (a label with neither gives nothing), plus composed texts of 2-3 labels, one
    pair per label they name; gold maps each anchor to every label it speaks for."""
    pairs: list[Pair] = []
    gold: dict[str, set[str]] = {}
    usable = [lid for lid in label_ids if labels[lid].name]
    for label_id in usable:
        label = labels[label_id]
        anchors = [("alias", a) for a in label.aliases]
        if label.description:
            anchors.append(("description", label.description))
        for kind, text in anchors:
            if text.casefold() != label.name.casefold():
                pairs.append(Pair(text, label.name, label_id, kind))
                gold.setdefault(text, set()).add(label_id)
    if len(usable) > 1:
        # A catalog of names alone has no alias or description pair: composed texts still are.
        for _ in range(int(len(pairs) * COMPOSED_PER_PAIR) or len(usable) // 4):
            parts = rng.sample(usable, min(len(usable), rng.choice((2, 3))))
            text = join([_piece(labels[lid], rng) for lid in parts])
            gold.setdefault(text, set()).update(parts)
            pairs.extend(Pair(text, labels[lid].name, lid, "composed") for lid in parts)
    rng.shuffle(pairs)
    return pairs, {text: frozenset(owners) for text, owners in gold.items()}


def _piece(label: Label, rng: random.Random) -> str:
    """How a composed text names the label: a short alias when it has one (a text names a
    label in a few words), else its name, now and then the start of its description."""
    terse = [a for a in label.aliases if len(a.split()) <= TERSE_WORDS]
    if label.description and rng.random() < 0.2:
        return fragment(label.description)
    return rng.choice(terse) if terse else label.name


def pair_kinds(kinds: Sequence[str]) -> dict[str, int]:
    """How many training pairs of each kind ("label"/"text" from examples, "alias",
    "description", "composed" from the catalog)."""
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}
