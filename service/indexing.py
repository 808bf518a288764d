"""Index a catalog file (plus example files) with progress: validate all, then write."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from retrieval.catalog import load_catalog, load_examples
from retrieval.index import SyncReport
from service.factory import build_index
from service.settings import Settings


def build_or_update(settings: Settings, catalog_path: Path, example_paths: Sequence[Path],
                    prune: bool = True) -> tuple[SyncReport, float]:
    """Validate the catalog and examples completely, then sync the index; returns (report, s)."""
    catalog = load_catalog(catalog_path)
    for path in example_paths:
        catalog = catalog.with_examples(load_examples(path, catalog))
    started = time.perf_counter()
    index = build_index(settings)
    with tqdm(total=len(catalog), unit="label", desc="indexing", leave=False,
              disable=None, mininterval=1.0) as bar:
        report = index.sync(catalog, progress=bar.update, prune=prune)
    return report, time.perf_counter() - started
