"""Prototype vectors: one per label with examples, its own kind, following its examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.catalog import load_catalog
from retrieval.embedder import Embedder
from retrieval.index import PROTOTYPE, LabelIndex, chroma_client
from tests.conftest import MINI_CATALOG


def prototypes(index: LabelIndex) -> dict[str, np.ndarray]:
    return {v.label_id: v.vector for v in index.iter_vectors() if v.kind == PROTOTYPE}


def test_prototype_is_the_normalised_mean_of_the_examples(tmp_path: Path,
                                                          embedder: Embedder) -> None:
    catalog = load_catalog(MINI_CATALOG)
    index = LabelIndex(chroma_client(tmp_path), embedder, prototypes=True)
    index.sync(catalog)
    found = prototypes(index)
    with_examples = {lid for lid, lab in catalog.labels.items() if lab.examples}
    assert set(found) == with_examples
    cats = embedder.embed(list(catalog.labels["pets.cats"].examples)).mean(axis=0)
    assert np.allclose(found["pets.cats"], cats / np.linalg.norm(cats), atol=1e-5)
    # The flag stays with the index.
    assert LabelIndex(chroma_client(tmp_path), embedder).prototypes


def test_prototype_follows_its_examples_and_goes_with_its_label(tmp_path: Path,
                                                                embedder: Embedder) -> None:
    catalog = load_catalog(MINI_CATALOG)
    index = LabelIndex(chroma_client(tmp_path), embedder, prototypes=True)
    index.sync(catalog)
    before = prototypes(index)["pets.cats"]
    index.add_examples("pets.cats", ["my cat sleeps on my keyboard"])
    after = prototypes(index)
    assert sum(1 for v in index.iter_vectors()
               if v.kind == PROTOTYPE and v.label_id == "pets.cats") == 1  # old one retired
    stored = [*catalog.labels["pets.cats"].examples, "my cat sleeps on my keyboard"]
    mean = embedder.embed(stored).mean(axis=0)
    assert not np.allclose(before, after["pets.cats"], atol=1e-4)
    assert np.allclose(after["pets.cats"], mean / np.linalg.norm(mean), atol=1e-5)
    index.delete(["pets.cats"])
    assert "pets.cats" not in prototypes(index)


def test_switching_prototypes_on_adds_them_without_re_embedding(tmp_path: Path,
                                                                embedder: Embedder) -> None:
    catalog = load_catalog(MINI_CATALOG)
    plain = LabelIndex(chroma_client(tmp_path), embedder)
    first = plain.sync(catalog)
    assert not prototypes(plain)
    report = LabelIndex(chroma_client(tmp_path), embedder, prototypes=True).sync(catalog)
    with_examples = sum(1 for lab in catalog.labels.values() if lab.examples)
    assert report.vectors_added == with_examples  # only the prototypes: texts are unchanged
    assert report.vectors_total == first.vectors_total + with_examples
