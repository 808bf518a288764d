"""A dev split held out of labelled examples: stratified by label, never a label's last example."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence


def holdout(gold: Sequence[Sequence[str]], share: float = 0.2,
            keys: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Row numbers of the train and dev parts of labelled rows (`gold[i]`: row i's labels).

    Each label lends dev at most `share` of its rows (rounded down, so a label with one row
    keeps it in train, where it becomes an example); a row goes to dev only if each of its
    labels still has room; rows with no label (out of scope) all go to dev, since they are no
    label's example. The order is a stable hash of `keys` (the texts), not the file order.
    """
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), not {share}")
    keys = keys if keys is not None else [str(i) for i in range(len(gold))]
    counts = Counter(label for labels in gold for label in set(labels))
    room = {label: math.floor(share * n) for label, n in counts.items()}
    order = sorted(range(len(gold)), key=lambda i: hashlib.sha1(keys[i].encode()).digest())
    train, dev = [], []
    for i in order:
        labels = set(gold[i])
        if not labels or all(room[label] > 0 for label in labels):
            for label in labels:
                room[label] -= 1
            dev.append(i)
        else:
            train.append(i)
    return sorted(train), sorted(dev)
