"""The dev set `labelrank fit` chooses on: labelled texts (a split of the examples or a --dev
file), or, for a catalog with few or no examples, pseudo-queries made from labels held out of
tuning; either way with out-of-scope texts, its own when the labelled ones have none."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import partial

from retrieval.calibration.held_out import HeldOutIndex
from retrieval.calibration.pseudo_queries import (
    COMPOSED_SHARE,
    NONE_SHARE,
    PseudoSet,
    add_copies,
    build_pseudo_set,
)
from retrieval.calibration.scoring import Calibration
from retrieval.calibration.search import search_settings
from retrieval.catalog import Catalog
from retrieval.errors import LabelrankError
from retrieval.index import LabelIndex, label_texts
from service.factory import search_space
from service.jobs.self_calibration import MIN_PSEUDO_TEXTS, head_without
from service.settings import Settings

Rows = list[tuple[str, tuple[str, ...]]]
# Fewer held-out example texts than this choose nothing reliably: pseudo-queries instead.
MIN_DEV_TEXTS = 50


class FitError(LabelrankError):
    """Raised when fit cannot start: no dev texts to choose anything on."""

    code = "fit_refused"
    status = 422


@dataclass
class LabeledDev:
    """Labelled dev texts. With none out of scope, some labels are taken out of the catalog in
    the view calibration sees, so that their texts are out of scope there: the threshold then
    has texts to learn "none" on."""

    rows: Rows
    none_share: float | None  # asked, or the traffic's; None: weigh texts as they come
    name: str
    out_of_scope: tuple[str, ...] = ()
    held_labels: frozenset[str] = frozenset()  # none: every label's catalog texts may train

    @classmethod
    def of(cls, rows: Rows, none_share: float | None, name: str, seed: int = 0) -> LabeledDev:
        """The dev set, with labels taken out when no text is out of scope (the share asked
        for is kept only when some text is out of scope, in the end)."""
        if any(not labels for _, labels in rows):
            return cls(rows, none_share, name)
        gone = _taken_out(rows, random.Random(seed))
        return cls(rows, none_share if gone else None, name, gone)

    def calibrate(self, settings: Settings, index: LabelIndex, min_texts_per_s: float
                  ) -> Calibration:
        """The calibration search on these texts, over the index (or its view without the
        labels taken out)."""
        gone = set(self.out_of_scope)
        texts = [t for t, _ in self.rows]
        gold = [[lab for lab in labels if lab not in gone] for _, labels in self.rows]
        view = (HeldOutIndex(index, [], 1, self.out_of_scope, lambda _: index.head())
                if gone else index)
        metric = "f1_samples" if any(len(labels) > 1 for _, labels in self.rows) else "accuracy"
        best, _ = search_settings(view, texts, gold, settings.top_k, metric,
                                  search_space(settings), min_texts_per_s,
                                  none_share=self.none_share)
        return best

    def describe(self) -> dict:
        """As saved in the calibration record and the report."""
        return {"name": self.name, "n": len(self.rows), "none_share": self.share(),
                "labels_taken_out_of_scope": len(self.out_of_scope)}

    def share(self) -> float | None:
        """The out-of-scope share the thresholds are set for."""
        if self.none_share is not None or not self.out_of_scope:
            return self.none_share
        gone = set(self.out_of_scope)
        return round(sum(set(labels) <= gone for _, labels in self.rows) / len(self.rows), 3)


def _taken_out(rows: Rows, rng: random.Random) -> tuple[str, ...]:
    """Labels whose texts make about NONE_SHARE of the dev texts out of scope once the labels
    are gone (at most a third of the labels: the rest must still be told apart)."""
    labels = sorted({lab for _, labels in rows for lab in labels})
    rng.shuffle(labels)
    gone: list[str] = []
    out = 0
    for label in labels[:len(labels) // 3]:
        if out >= NONE_SHARE * len(rows):
            break
        gone.append(label)
        out = sum(set(labs) <= set(gone) for _, labs in rows)
    return tuple(gone) if out else ()


@dataclass
class PseudoDev:
    """Pseudo-queries (as self-calibration makes them: names, aliases, descriptions, examples,
    composed texts, texts of labels taken out whole) of labels held out of tuning; each query's
    own texts are held out of the index it is scored on."""

    held_labels: frozenset[str]
    pseudo: PseudoSet
    none_share: float | None = None
    name: str = "fit pseudo-queries"
    copied: bool = False  # the copies of its texts under other labels are in the gold

    @classmethod
    def of(cls, catalog: Catalog, share: float, size: int, none_share: float | None,
           seed: int = 0, multi_share: float = COMPOSED_SHARE) -> PseudoDev:
        """Hold out a share of the labels (enough for `size` queries) and make their queries
        (`multi_share` of them of several labels); refused when the catalog is too small."""
        usable = sorted(lid for lid, label in catalog.labels.items()
                        if label.assignable and len(label_texts(label)) > 1)
        wanted = min(math.ceil(size / 2), max(2, int(share * len(usable))))
        held = frozenset(random.Random(seed).sample(usable, min(wanted, len(usable))))
        labels = {lid: catalog.labels[lid] for lid in held}
        pseudo = build_pseudo_set(labels, lambda lid: catalog.labels[lid].examples, size, seed,
                                  composed_share=multi_share)
        if len(pseudo.texts) < MIN_PSEUDO_TEXTS:
            raise FitError(f"the catalog makes only {len(pseudo.texts)} pseudo-queries from the "
                           f"labels it can hold out of tuning (at least {MIN_PSEUDO_TEXTS} "
                           "needed): give labelled texts with --dev FILE")
        return cls(held, pseudo, none_share)

    def calibrate(self, settings: Settings, index: LabelIndex, min_texts_per_s: float
                  ) -> Calibration:
        """The self-calibration search on the pseudo-queries, over the index without their
        own texts (and with a head retrained without them)."""
        pseudo = self._with_copies(index)
        view = HeldOutIndex(index, pseudo.all_held_out(),
                            max(len(h) for h in pseudo.held_out), pseudo.out_of_scope,
                            partial(head_without, settings, index))
        metric = "f1_samples" if any(len(g) > 1 for g in pseudo.gold) else "accuracy"
        user_like = [i for i, kind in enumerate(pseudo.kinds) if kind in ("example", "composed")]
        best, _ = search_settings(view, pseudo.texts, pseudo.gold, settings.top_k, metric,
                                  search_space(settings), min_texts_per_s,
                                  user_like if len(user_like) >= MIN_PSEUDO_TEXTS else None,
                                  none_share=self.none_share)
        return best

    def _with_copies(self, index: LabelIndex) -> PseudoSet:
        """The pseudo set with the copies of its texts under other labels (found once, in the
        first index: every candidate is scored on the same queries)."""
        if not self.copied:
            add_copies(self.pseudo, index)
            self.copied = True
        return self.pseudo

    @property
    def rows(self) -> Rows:
        """The pseudo-queries as labelled rows."""
        return [(t, tuple(g)) for t, g in zip(self.pseudo.texts, self.pseudo.gold, strict=True)]

    def describe(self) -> dict:
        """As saved in the calibration record and the report."""
        return {"name": self.name, "n": len(self.pseudo.texts),
                "labels_held_out_of_tuning": len(self.held_labels),
                "composition": self.pseudo.composition, "none_share": self.share()}

    def share(self) -> float | None:
        """The out-of-scope share the thresholds are set for."""
        if self.none_share is not None:
            return self.none_share
        return round(self.pseudo.kinds.count("none") / max(len(self.pseudo.texts), 1), 3)
