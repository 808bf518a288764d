"""Write-ahead markers for label writes: a write that a crash interrupts is finished at the next
open by the directory's writer, so each label ends wholly old or wholly new.

A label's vectors and its record live in two Chroma collections, written one call after the
other; nothing makes the calls atomic together. Before the first call, the write is recorded
here (the labels as they are to be, or the ids to delete); after the last, the record goes.
The markers live in the metadata of a collection of their own: it holds no rows, so marking
costs no graph slots, and it sits beside the index wherever the index is (directory or server).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from retrieval.catalog import Label

_TAG = "labelrank-journal"
# A label write takes seconds; one begun this long ago is a crashed one even where other
# processes write the same index (several workers on a Chroma server).
STALE_S = 600.0


@dataclass(frozen=True)
class PendingWrite:
    """A label write that began and had not ended when last seen."""

    key: str
    started: float
    labels: tuple[Label, ...] = ()  # written as these, examples included
    deleted: tuple[str, ...] = ()  # or these label ids removed


class Journal:
    """The pending label writes of one index, one metadata entry each."""

    def __init__(self, client, name: str) -> None:
        self._client, self._name = client, f"{name}-journal"
        self._collection = client.get_or_create_collection(
            self._name, metadata={_TAG: 1}, embedding_function=None)

    def begin(self, labels: tuple[Label, ...] = (), deleted: tuple[str, ...] = ()) -> str:
        """Record a write about to start; returns its key for `end`."""
        key = f"w-{uuid.uuid4().hex}"
        entry = {"started": time.time(), "labels": [_label_dict(lab) for lab in labels],
                 "deleted": list(deleted)}
        self._collection.modify(metadata={**self._metadata(), key: json.dumps(entry)})
        return key

    def end(self, key: str) -> None:
        """Forget a write that completed."""
        self._collection.modify(metadata={**self._metadata(), key: None})

    def pending(self, older_than_s: float = 0.0) -> list[PendingWrite]:
        """Writes begun at least `older_than_s` ago and not ended, oldest first."""
        found = []
        for key, raw in self._metadata().items():
            if key == _TAG or not isinstance(raw, str):
                continue
            entry = json.loads(raw)
            if time.time() - entry["started"] >= older_than_s:
                found.append(PendingWrite(key, entry["started"],
                                          tuple(_label_of(d) for d in entry["labels"]),
                                          tuple(entry["deleted"])))
        return sorted(found, key=lambda write: write.started)

    def _metadata(self) -> dict:
        # Read afresh: with a Chroma server, other workers mark their writes here too.
        return dict(self._client.get_collection(self._name).metadata or {}) or {_TAG: 1}


def _label_dict(label: Label) -> dict[str, object]:
    return {"id": label.id, "name": label.name, "description": label.description,
            "aliases": list(label.aliases), "parent": label.parent,
            "assignable": label.assignable, "examples": list(label.examples)}


def _label_of(data: dict) -> Label:
    return Label(id=data["id"], name=data["name"], description=data["description"],
                 aliases=tuple(data["aliases"]), parent=data["parent"],
                 assignable=data["assignable"], examples=tuple(data["examples"]))
