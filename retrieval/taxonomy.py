"""The label tree of one catalog snapshot: ancestor paths, subtrees and branches."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

from retrieval.catalog import Label
from retrieval.errors import UnknownLabelError

# Catalog validation refuses cycles; labels edited live are bounded anyway.
_MAX_DEPTH = 64


class UnknownSubtreeError(UnknownLabelError):
    """Raised when a subtree restriction names a label that is not in the index."""

    code = "unknown_subtree"
    status = 404


class Taxonomy:
    """Parents and children of a label snapshot (a dict that is replaced, never edited)."""

    def __init__(self, labels: Mapping[str, Label]) -> None:
        self.labels = labels
        self._children: dict[str, list[str]] = {}
        for label in labels.values():
            if label.parent is not None:
                self._children.setdefault(label.parent, []).append(label.id)
        self._paths: dict[str, tuple[str, ...]] = {}

    def path(self, label_id: str) -> tuple[str, ...]:
        """Ids of the label's ancestors, root first (empty for a root or an unknown id)."""
        found = self._paths.get(label_id)
        if found is None:
            if label_id not in self.labels:  # deleted since the caller's snapshot
                return ()
            chain: list[str] = []
            parent = self.labels[label_id].parent
            while parent is not None and parent in self.labels and len(chain) < _MAX_DEPTH:
                chain.append(parent)
                parent = self.labels[parent].parent
            found = self._paths[label_id] = tuple(chain[::-1])
        return found

    def branch(self, label_id: str, depth: int) -> str:
        """The label's ancestor at `depth` (0: its root), or the label itself when shallower."""
        path = self.path(label_id)
        return path[depth] if depth < len(path) else label_id

    def descendants(self, label_id: str) -> list[str]:
        """Every label below `label_id`, nearest first."""
        found: dict[str, None] = {}
        queue = deque(self._children.get(label_id, []))
        while queue:
            current = queue.popleft()
            if current != label_id and current not in found:
                found[current] = None
                queue.extend(self._children.get(current, []))
        return list(found)

    def subtree(self, label_id: str) -> frozenset[str]:
        """The label and everything below it; UnknownSubtreeError for an unknown id."""
        if label_id not in self.labels:
            raise UnknownSubtreeError(f"unknown subtree root {label_id!r}", label_id=label_id,
                                      field="subtree")
        return frozenset([label_id, *self.descendants(label_id)])

    def max_depth(self) -> int:
        """Depth of the deepest label (0 for a flat catalog)."""
        return max((len(self.path(lid)) for lid in self.labels), default=0)


_lock = threading.Lock()
_recent: list[Taxonomy] = []


def taxonomy_of(labels: Mapping[str, Label]) -> Taxonomy:
    """The taxonomy of this exact labels dict, built once per catalog version."""
    with _lock:
        for taxonomy in _recent:
            if taxonomy.labels is labels:
                return taxonomy
        taxonomy = Taxonomy(labels)
        _recent.insert(0, taxonomy)
        del _recent[4:]
        return taxonomy
