"""The shape default: settings for a catalog that could not calibrate itself, from its shape."""

from __future__ import annotations

from collections.abc import Sequence

# Reciprocal rank over several hits rewards a label for having many vectors near the text: right
# when those are ~100 examples of an intent, wrong when they are aliases of a name (ESCO).
SHAPE_MIN_EXAMPLES = 3
# A head's probability mixed half and half with retrieval similarity: on CLINC150 valid halves
# (bench/head_accuracy.py) in-scope 95.3 against 89.1 for retrieval alone, and a better "none"
# (AUROC 0.972 vs 0.971) than the head alone (0.950).
SHAPE_HEAD_WEIGHT = 0.5


def shape_default(example_counts: Sequence[int], head: bool = False) -> dict[str, object]:
    """The aggregation for a catalog of this shape (example texts per label, a sample will do),
    used until anything is calibrated: reciprocal rank over a label's best 3 hits when most
    labels have at least SHAPE_MIN_EXAMPLES examples, else max-similarity; with a trained
    `head`, its probability mixed in."""
    counts = sorted(example_counts)
    mixed = {"head_weight": SHAPE_HEAD_WEIGHT} if head else {}
    if counts and counts[len(counts) // 2] >= SHAPE_MIN_EXAMPLES:
        return {"aggregation": "rrf", "rrf_k": 1.0, "max_hits_per_label": 3, **mixed}
    return {"aggregation": "max", "rrf_k": 1.0, "max_hits_per_label": 1, **mixed}
