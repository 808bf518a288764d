"""Live label edits on a running index: create, replace, patch, delete, learn from feedback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from retrieval.catalog import Label
from retrieval.index import LabelIndex, SyncReport
from retrieval.iterables import dedupe
from retrieval.taxonomy import taxonomy_of
from service.labels.bodies import (
    FeedbackIn,
    FeedbackOut,
    InvalidLabelError,
    LabelHasChildrenError,
    LabelIn,
    LabelPatch,
)
from service.pipeline import check_text


@dataclass
class Written:
    """A label after a write, and what the index did."""

    label: Label
    created: bool
    report: SyncReport


def page(index: LabelIndex, parent: str | None, prefix: str | None, offset: int,
         limit: int, subtree: str | None = None) -> tuple[list[Label], int]:
    """Labels sorted by id, filtered by parent (empty string: top level), subtree (the label
    and all its descendants) and id prefix."""
    snapshot = index.labels
    labels: Iterable[Label] = snapshot.values()
    if subtree is not None:
        within = taxonomy_of(snapshot).subtree(subtree)
        labels = (lab for lab in labels if lab.id in within)
    if parent is not None:
        labels = (lab for lab in labels if (lab.parent or "") == parent)
    if prefix:
        labels = (lab for lab in labels if lab.id.startswith(prefix))
    matching = sorted(labels, key=lambda lab: lab.id)
    return matching[offset:offset + limit], len(matching)


def descendants(index: LabelIndex, label_id: str) -> list[str]:
    """Every label below `label_id`, nearest first."""
    return taxonomy_of(index.labels).descendants(label_id)


class LiveLabels:
    """Label writes on one index, one at a time, with the checks a catalog load would make."""

    def __init__(self, index: LabelIndex, max_text_chars: int, feedback_log: Path) -> None:
        self.index = index
        self.max_text_chars = max_text_chars
        self.feedback_log = feedback_log
        self.lock = threading.RLock()

    def put(self, label_id: str, body: LabelIn) -> Written:
        """Create or replace a label with exactly the given texts."""
        with self.lock:
            self._check_parent(label_id, body.parent)
            label = Label(id=label_id, name=body.name, description=body.description,
                          aliases=tuple(dedupe(body.aliases)), parent=body.parent,
                          assignable=body.assignable,
                          examples=tuple(dedupe(self._texts(body.examples))))
            created = label_id not in self.index.labels
            return Written(label, created, self.index.upsert(label))

    def patch(self, label_id: str, body: LabelPatch) -> Written:
        """Change some fields, add or remove examples and aliases."""
        with self.lock:
            label = self.index.get(label_id)
            fields = body.model_fields_set
            parent = body.parent if "parent" in fields else label.parent
            if "parent" in fields:
                self._check_parent(label_id, parent)
            drop_aliases = set(body.remove_aliases)
            aliases = [a for a in label.aliases if a not in drop_aliases]
            drop_examples = {t.strip() for t in body.remove_examples}
            examples = [t for t in self.index.examples(label_id) if t not in drop_examples]
            updated = replace(
                label, name=body.name or label.name,
                description=label.description if body.description is None else body.description,
                assignable=label.assignable if body.assignable is None else body.assignable,
                parent=parent, aliases=tuple(dedupe([*aliases, *body.add_aliases])),
                examples=tuple(dedupe([*examples, *self._texts(body.add_examples)])))
            return Written(updated, False, self.index.upsert(updated))

    def delete(self, label_id: str, cascade: bool) -> tuple[list[str], int]:
        """Remove a label; one with children only with `cascade`, which removes the subtree."""
        with self.lock:
            self.index.get(label_id)
            below = descendants(self.index, label_id)
            if below and not cascade:
                raise LabelHasChildrenError(
                    f"label {label_id!r} is the parent of {len(below)} label(s); delete or move "
                    "them first, or pass ?cascade=true to delete the whole subtree",
                    label_id=label_id, children=self.index.children(label_id)[:50])
            ids = [label_id, *below]
            return ids, self.index.delete(ids)

    def feedback(self, body: FeedbackIn) -> FeedbackOut:
        """Confirmed labels get the text as an example; rejected ones lose it, and are logged."""
        text = self._texts([body.text], keep_empty=True)[0]
        confirmed, rejected = dedupe(body.labels), dedupe(body.rejected)
        both = sorted(set(confirmed) & set(rejected))
        if both:
            raise InvalidLabelError(f"labels both confirmed and rejected: {both}",
                                    field="rejected", label_ids=both)
        with self.lock:
            for label_id in [*confirmed, *rejected]:
                self.index.get(label_id)
            # A write that changed nothing (text already there, or already absent) reports no
            # changed label, so no separate look-up of the examples is needed.
            added = sum(bool(self.index.add_examples(label_id, [text]).changed_ids)
                        for label_id in confirmed)
            removed = sum(bool(self.index.remove_examples(label_id, [text]).changed_ids)
                          for label_id in rejected)
            self._log({"time": time.time(), "text": text, "confirmed": confirmed,
                       "rejected": rejected})
        return FeedbackOut(confirmed=confirmed, rejected=rejected, examples_added=added,
                           examples_removed=removed)

    def _check_parent(self, label_id: str, parent: str | None) -> None:
        if parent is None:
            return
        if parent not in self.index.labels:
            raise InvalidLabelError(f"parent {parent!r} is not in the index",
                                    field="parent", label_id=parent)
        seen, current = set(), parent
        while current is not None and current not in seen:
            if current == label_id:
                raise InvalidLabelError(f"parent {parent!r} would make a cycle through "
                                        f"{label_id!r}", field="parent", label_id=parent)
            seen.add(current)
            current = self.index.labels[current].parent if current in self.index.labels else None

    def _texts(self, texts: Iterable[str], keep_empty: bool = False) -> list[str]:
        cleaned = []
        for text in texts:
            text = text.strip()
            if text or keep_empty:
                check_text(text, self.max_text_chars)
                cleaned.append(text)
        return cleaned

    def _log(self, record: dict) -> None:
        self.feedback_log.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        # Append mode and one write per line: lines from several workers do not interleave.
        with self.feedback_log.open("a", encoding="utf-8") as handle:
            handle.write(line)
