"""Index a catalog file (plus example files) with progress: validate all, then write."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from retrieval.catalog import Catalog, SkippedRow, load_catalog, load_examples
from retrieval.embedder import Embedder
from retrieval.head_train import TrainConfig, train_index_head
from retrieval.index import LabelIndex, SyncReport, label_texts
from retrieval.pivots import pivot_catalog
from retrieval.process_embedder import ProcessEmbedder
from service.factory import build_embedder, build_index, embedder_factory
from service.locking import writing
from service.settings import Settings


def build_or_update(settings: Settings, catalog_path: Path, example_paths: Sequence[Path],
                    prune: bool = True,
                    skipped: list[SkippedRow] | None = None) -> tuple[SyncReport, float]:
    """Validate the catalog and examples completely, then sync the index; returns (report, s).
    A bad example row stops the run too, unless `skipped` is given to collect it."""
    catalog = load_catalog(catalog_path)
    for path in example_paths:
        catalog = catalog.with_examples(load_examples(path, catalog, skipped))
    return index_catalog(settings, catalog, prune=prune)


def index_catalog(settings: Settings, catalog: Catalog,
                  prune: bool = True) -> tuple[SyncReport, float]:
    """Sync the index to a validated catalog, with a progress bar; returns (report, seconds).
    Refuses with `index_in_use` while another process serves or indexes the directory."""
    started = time.perf_counter()
    with writing(settings, "index"), _build_embedder(settings, catalog) as embedder:
        index = build_index(settings, embedder)
        index.recover(shared=settings.chroma_host is not None)
        dropped = 0
        if settings.max_examples_per_label:
            catalog, dropped = _with_pivots(catalog, embedder, settings.max_examples_per_label)
        with tqdm(total=len(catalog), unit="label", desc="indexing", leave=False,
                  disable=None, mininterval=1.0) as bar:
            report = index.sync(catalog, progress=bar.update, prune=prune)
    report.examples_left_out = dropped
    return report, time.perf_counter() - started


def head_config(settings: Settings) -> TrainConfig:
    """How the head trains, from the "Learned head" settings."""
    return TrainConfig(mode=settings.head_mode, epochs=settings.head_epochs,
                       min_steps=settings.head_min_steps, max_seconds=settings.head_max_seconds,
                       hard_negatives=settings.head_hard_negatives,
                       random_negatives=settings.head_random_negatives)


def train_head(settings: Settings, index: LabelIndex) -> str:
    """Train the head on the index's examples when the settings ask for it and anything is
    new since the last training; returns a line saying what happened. The caller holds the
    directory's writing lock."""
    if not settings.head_train:
        return "head: not trained (LABELRANK_HEAD_TRAIN=false)"
    assignable = [lid for lid, label in index.labels.items() if label.assignable]
    head = index.head()
    if head is not None and head.info.mode == settings.head_mode:
        status = head.status(assignable)
        if status.trained and not status.new and not status.stale:
            return f"head: up to date ({status.trained} labels, trained {head.info.trained_at})"
    info = train_index_head(index, head_config(settings))
    if info is None:
        return "head: none (fewer than two labels have examples)"
    return (f"head: trained on {info.examples} examples of {info.labels} labels in "
            f"{info.seconds:.1f} s ({info.epochs} epochs, {info.mode})")


def _with_pivots(catalog: Catalog, embedder: Embedder, cap: int) -> tuple[Catalog, int]:
    over = sum(len(label.examples) > cap for label in catalog.labels.values())
    with tqdm(total=over, unit="label", desc="choosing pivots", leave=False,
              disable=None, mininterval=1.0) as bar:
        return pivot_catalog(catalog, embedder, cap, progress=bar.update)


@contextmanager
def _build_embedder(settings: Settings, catalog: Catalog) -> Iterator[Embedder]:
    """A worker-process embedder for big builds (embedding overlaps Chroma's writes), else the
    in-process one: spawning a worker costs seconds that a small update would not win back."""
    texts = sum(len(label_texts(label)) for label in catalog.labels.values())
    if texts < settings.index_worker_min_texts:
        yield build_embedder(settings)
        return
    with ProcessEmbedder(embedder_factory(settings)) as embedder:
        yield embedder
