"""Self-calibration: the calibration search on pseudo-queries made from the index's own catalog,
run at the end of `labelrank index` and by `labelrank calibrate --self`."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from tqdm import tqdm

from retrieval.calibration import work as work_meter
from retrieval.calibration.held_out import HeldOutIndex
from retrieval.calibration.pseudo_queries import (
    COMPOSED_SHARE,
    PseudoSet,
    add_copies,
    build_pseudo_set,
)
from retrieval.calibration.scoring import Calibration, calibration_record
from retrieval.calibration.search import SearchLog, SearchSpace, search_settings
from retrieval.calibration.shape import shape_default
from retrieval.calibration.work import WorkMeter
from retrieval.head import LabelHead
from retrieval.head_train import fit_index_head
from retrieval.index import LabelIndex
from service.factory import search_space
from service.jobs.indexing import head_config
from service.settings import Settings

# Fewer pseudo-queries than this say nothing a threshold could be fitted to.
MIN_PSEUDO_TEXTS = 20
SHAPE_SAMPLE = 200  # labels whose example counts decide the shape default
# The plan that keeps calibration in proportion to the index it follows. Sub-queries cost ~25
# encoder passes per text (one per n-gram: 9,458 n-grams for the demo catalog's 377 user-like
# pseudo-queries, 4.5 times the index's own 2,114 texts), token matching one more pass and a
# late-interaction score per candidate: their variants are screened on SCREEN texts, and
# only the best goes on to the whole sample.
SCREEN = 64
# A small catalog gets fewer pseudo-queries (down to this many): one per VECTORS_PER_TEXT of
# its vectors, so that their searches stay a share of what indexing embedded (the demo
# catalog's 2,114 vectors: 211 instead of 400).
MIN_TEXTS = 200
VECTORS_PER_TEXT = 10
# Every aggregation at the middle depth, then the best GRID_KEEP at the other depths.
GRID_KEEP = 3


@dataclass
class SelfCalibration:
    """What self-calibration found (None fields when the catalog was too small to try)."""

    record: dict
    best: Calibration | None = None
    results: list[Calibration] = field(default_factory=list)
    pseudo: PseudoSet | None = None
    seconds: float = 0.0


def self_calibrate(settings: Settings, index: LabelIndex, space: SearchSpace | None = None,
                   min_texts_per_s: float | None = None, budget_s: float | None = None,
                   progress: bool = False, texts: int | None = None,
                   none_share: float | None = None,
                   multi_share: float | None = None,
                   meter: WorkMeter | None = None) -> SelfCalibration:
    """Calibrate on a pseudo dev set from the catalog (each query's own texts held out of the
    index; `texts` of them, by default as many as `pseudo_texts` gives the catalog); a
    catalog too small for that gets the shape default. After `budget_s` seconds of work (as
    the reference machine would take: the same stop on any machine) no further setting is
    tried (the record names what was left). `none_share` (default: the settings'
    `self_calibration_none_share`) weighs the out-of-scope pseudo-queries as that share of
    all; `multi_share` (default: `self_calibration_multi_share`) of them are composed of
    several labels. The work is counted on `meter` (default: a new one). Nothing is saved
    here."""
    started = time.perf_counter()
    catalog = {"catalog_hash": index.fingerprint()["catalog_hash"]}
    size = texts or pseudo_texts(settings.self_calibration_texts, index.vector_count())
    shares = stated_shares(settings, none_share, multi_share)
    pseudo = _pseudo_set(index, size, shares["multi_share"])
    if len(pseudo.texts) < MIN_PSEUDO_TEXTS:
        return SelfCalibration(shape_record(index), pseudo=pseudo,
                               seconds=time.perf_counter() - started)
    floor = (settings.calibration_min_texts_per_s if min_texts_per_s is None
             else min_texts_per_s)
    view = HeldOutIndex(index, pseudo.all_held_out(), max(len(h) for h in pseudo.held_out),
                        pseudo.out_of_scope, partial(head_without, settings, index))
    metric = "f1_samples" if any(len(g) > 1 for g in pseudo.gold) else "accuracy"
    # Sub-queries split a text into the parts that may name labels: judge them on texts like
    # users' (held-out examples, several labels joined), not on a label's own name or alias.
    user_like = [i for i, kind in enumerate(pseudo.kinds) if kind in ("example", "composed")]
    log, meter = SearchLog(), meter if meter is not None else WorkMeter()
    with _progress_bar(progress, log):
        best, results = search_settings(
            view, pseudo.texts, pseudo.gold, settings.top_k, metric,
            space or search_space(settings, screen=SCREEN, grid_keep=GRID_KEEP), floor,
            user_like if len(user_like) >= MIN_PSEUDO_TEXTS else None,
            none_share=shares.get("none_share"), budget_s=budget_s, log=log, meter=meter,
            wall_deadline=None if budget_s is None else started + work_meter.WALL_FACTOR * budget_s)
    seconds = time.perf_counter() - started
    work = {**log.describe(), **meter.describe(),
            **({"budget_s": round(budget_s, 1)} if budget_s is not None else {})}
    record = calibration_record(best, "self", {**pseudo.describe(), **catalog, **shares,
                                               "seconds": round(seconds, 1), "work": work})
    return SelfCalibration(record, best, results, pseudo, seconds)


def stated_shares(settings: Settings, none_share: float | None = None,
                  multi_share: float | None = None) -> dict[str, float]:
    """The traffic shares the pseudo-queries are made and weighed for (the arguments, else the
    settings'), as the record's dev set saves them: no `none_share` when none is stated."""
    none = settings.self_calibration_none_share if none_share is None else none_share
    multi = settings.self_calibration_multi_share if multi_share is None else multi_share
    return {"multi_share": multi, **({} if none is None else {"none_share": none})}


def pseudo_texts(most: int, vectors: int) -> int:
    """How many pseudo-queries a catalog of this many vectors gets (at most `most`)."""
    return min(most, max(MIN_TEXTS, vectors // VECTORS_PER_TEXT))


@contextmanager
def _progress_bar(shown: bool, log: SearchLog) -> Iterator[None]:
    """A progress bar of the settings ranked (on a terminal only, as indexing's)."""
    if not shown:
        yield
        return
    with tqdm(unit="setting", desc="self-calibrating", leave=False, disable=None,
              mininterval=1.0) as bar:
        def advance(step: str, done: int, planned: int) -> None:
            bar.total = planned
            bar.set_postfix_str(step, refresh=False)
            bar.update(done - bar.n)

        log.progress = advance
        yield


def head_without(settings: Settings, index: LabelIndex,
                  hidden: frozenset[str]) -> LabelHead | None:
    """The head retrained with the index's own settings, without the held-out vectors."""
    fitted = fit_index_head(index, head_config(settings), skip=hidden)
    return LabelHead.detached(*fitted) if fitted else None


def _pseudo_set(index: LabelIndex, size: int, multi_share: float) -> PseudoSet:
    """Pseudo-queries, with their copies under other labels as gold too."""
    pseudo = build_pseudo_set(index.labels, index.examples, size, composed_share=multi_share)
    add_copies(pseudo, index)
    return pseudo


def shape_record(index: LabelIndex) -> dict:
    """The shape default as a saved record: the aggregation for this catalog's example counts."""
    labels = sorted(lid for lid, lab in index.labels.items() if lab.assignable)
    sample = random.Random(0).sample(labels, min(SHAPE_SAMPLE, len(labels)))
    counts = [len(index.examples(lid)) for lid in sample]
    settings = shape_default(counts, head=index.head() is not None)
    return {"settings": settings, "sources": dict.fromkeys(settings, "shape"), "source": "shape",
            "dev_set": {"labels_sampled": len(counts),
                        "with_examples": sum(c > 0 for c in counts),
                        "catalog_hash": index.fingerprint()["catalog_hash"]}}


def calibrate_after_index(settings: Settings, index: LabelIndex, embed_seconds: float = 0.0,
                          embed_work_s: float = 0.0) -> tuple[str, dict | None]:
    """At the end of `labelrank index`: keep a calibration from labeled data, skip an unchanged
    catalog (and stated shares), else self-calibrate within LABELRANK_SELF_CALIBRATION_SECONDS or
    the index's embedding (`embed_work_s`, in reference seconds: `work.embedding_cost`),
    whichever is longer, of work (or, switched off, save the shape default). `embed_seconds`,
    its wall time, is for the summary. Returns what happened in a line, and the record saved
    (None when nothing was)."""
    saved = index.calibration()
    current = index.fingerprint()["catalog_hash"]
    if saved and saved.get("source", "labeled") == "labeled":
        return ("calibration from labeled data kept (`labelrank calibrate --self` replaces "
                "it)", None)
    dev_set = (saved or {}).get("dev_set", {})
    # A record from before the multi-label share was a setting was made with the built-in one.
    saved_shares = {"multi_share": COMPOSED_SHARE,
                    **{k: dev_set[k] for k in ("multi_share", "none_share") if k in dev_set}}
    if (saved and dev_set.get("catalog_hash") == current
            and saved_shares == stated_shares(settings)):
        return f"{saved['source']} calibration up to date", None
    if not settings.self_calibration_texts:
        record = shape_record(index)
        index.save_calibration(record)
        return f"shape default saved: {record['settings']}", record
    budget = max(settings.self_calibration_seconds, embed_work_s)
    found = self_calibrate(settings, index, budget_s=budget, progress=True)
    index.save_calibration(found.record)
    return summary(found, embed_seconds), found.record


def summary(found: SelfCalibration, embed_seconds: float = 0.0) -> str:
    """One line on a self-calibration: the dev set, the setting chosen, its cost (against the
    index's embedding time, when given), what a spent budget left untried."""
    if found.best is None:
        n = len(found.pseudo.texts) if found.pseudo else 0
        return (f"catalog too small to calibrate itself ({n} pseudo-queries); shape default "
                f"saved: {found.record['settings']}")
    best = found.best
    composition = ", ".join(f"{n} {kind}" for kind, n in found.record["dev_set"][
        "composition"].items())
    work = found.record["dev_set"].get("work", {})
    ratio = f", {found.seconds / embed_seconds:.1f}x the embedding" if embed_seconds else ""
    counted = f" ({work['work_s']:g} s of work)" if "work_s" in work else ""
    cut = ""
    if work.get("budget_skipped"):
        spent = ("wall-clock limit" if work.get("wall_clock_cut")
                 else f"budget of {work['budget_s']:g} s of work")
        cut = f"; {spent} spent, not tried: {', '.join(work['budget_skipped'])}"
    return (f"self-calibrated in {found.seconds:.0f} s{counted}{ratio} on "
            f"{found.record['dev_set']['n']} pseudo-queries ({composition}; "
            f"{work.get('settings_ranked', len(found.results))} settings ranked): "
            f"{best.describe()}, {best.metric} {best.value:.3f}, {best.texts_per_s:.0f} "
            f"texts/s{cut} (labeled data passed to `labelrank calibrate` overrides it)")
