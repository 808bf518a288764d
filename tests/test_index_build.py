"""Big-build paths: chunked, pipelined writes and the worker-process embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.catalog import Catalog, Label
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.index import LabelIndex, chroma_client
from retrieval.pivots import choose_pivots
from retrieval.process_embedder import ProcessEmbedder
from service.factory import build_index, embedder_factory
from service.jobs.indexing import index_catalog
from tests.conftest import make_settings

WORDS = ["red", "green", "blue", "amber", "violet", "black", "white", "grey", "pink", "teal"]


def many_labels(n: int) -> Catalog:
    """`n` distinct labels with one example each: several write chunks, cheap to embed."""
    labels = {}
    for i in range(n):
        name = f"{WORDS[i % 10]} {WORDS[i // 10 % 10]} {WORDS[i // 100 % 10]} item {i}"
        labels[f"L{i}"] = Label(f"L{i}", name, examples=(f"I want the {name} please",))
    return Catalog(labels)


def test_pipelined_sync_writes_every_chunk(tmp_path: Path,
                                           embedder: SentenceTransformerEmbedder) -> None:
    catalog = many_labels(600)  # 256 labels per chunk: three chunks, the last one partial
    index = LabelIndex(chroma_client(tmp_path), embedder)
    ticks: list[int] = []
    report = index.sync(catalog, progress=ticks.append)
    assert report.labels_added == 600 and report.vectors_total == 1200
    assert ticks == [256, 256, 88]
    # Each label record carries its own name vector: names find themselves.
    records = index._records.get(ids=["L0", "L599"], include=["embeddings"])
    expected = embedder.embed([catalog.labels["L0"].name, catalog.labels["L599"].name])
    assert np.allclose(np.asarray(records["embeddings"]), expected, atol=1e-5)
    assert index.sync(catalog).labels_unchanged == 600  # nothing re-embedded the second time
    # Deep searches with texts stay under SQLite's variable limit (300 x 400 rows here).
    deep = index.search(embedder.embed(["blue amber item"] * 300), 400)
    assert len(deep) == 300 and all(len(hits) == 400 for hits in deep)


def test_worker_process_build_matches_in_process(tmp_path: Path,
                                                 embedder: SentenceTransformerEmbedder) -> None:
    catalog = many_labels(300)
    worker = make_settings(tmp_path / "worker", index_worker_min_texts=0)
    report, _ = index_catalog(worker, catalog)
    assert report.vectors_total == 600
    inline = LabelIndex(chroma_client(tmp_path / "inline"), embedder)
    inline.sync(catalog)
    query = embedder.embed(["I want the blue amber red item 121 please"])
    built = build_index(worker, embedder)
    assert [h.label_id for h in built.search(query, 5)[0]] == \
        [h.label_id for h in inline.search(query, 5)[0]]


def test_process_embedder_reproduces_its_factory(tmp_path: Path,
                                                 embedder: SentenceTransformerEmbedder) -> None:
    texts = ["a cup of coffee", "tax return deadline"]
    with ProcessEmbedder(embedder_factory(make_settings(tmp_path))) as worker:
        assert (worker.name, worker.dim) == (embedder.name, embedder.dim)
        assert np.allclose(worker.embed(texts), embedder.embed(texts), atol=1e-5)
        assert worker.embed([]).shape == (0, embedder.dim)


def test_search_without_texts_finds_the_same_hits(mini_index: LabelIndex) -> None:
    query = mini_index.embedder.embed(["how finely should I grind beans for espresso"])
    full = mini_index.search(query, 20)[0]
    lean = mini_index.search(query, 20, with_texts=False)[0]
    assert [(h.label_id, h.vector_id, round(h.similarity, 6)) for h in lean] == \
        [(h.label_id, h.vector_id, round(h.similarity, 6)) for h in full]
    assert all(h.text == "" and h.kind == "" for h in lean)
    assert {h.kind for h in full} >= {"name", "example"}


CLUSTERS = {
    "coffee": ["how fine should I grind espresso beans", "best grind size for espresso",
               "my espresso tastes bitter, grind coarser?", "espresso grinder settings"],
    "taxes": ["when is the income tax return deadline", "can I deduct my home office on taxes",
              "filing my tax return late", "tax deductions for freelancers"],
    "cats": ["my kitten bites my hands", "why does my cat scratch the sofa",
             "cat keeps meowing at night", "how to stop a kitten from biting"],
}


def test_pivots_cover_every_cluster(embedder: SentenceTransformerEmbedder) -> None:
    texts = [t for group in CLUSTERS.values() for t in group]
    keep = choose_pivots(embedder.embed(texts), 3)
    assert len(keep) == 3
    assert {texts[i] for i in keep} & set(CLUSTERS["coffee"])
    assert {texts[i] for i in keep} & set(CLUSTERS["taxes"])
    assert {texts[i] for i in keep} & set(CLUSTERS["cats"])
    assert choose_pivots(embedder.embed(texts[:2]), 3) == [0, 1]


def test_index_caps_examples_with_pivots(tmp_path: Path) -> None:
    texts = tuple(t for group in CLUSTERS.values() for t in group)
    catalog = Catalog({"mixed": Label("mixed", "Mixed bag", examples=texts),
                       "small": Label("small", "Small", examples=texts[:2])})
    report, _ = index_catalog(make_settings(tmp_path, max_examples_per_label=3), catalog)
    assert report.examples_left_out == len(texts) - 3
    assert report.vectors_total == (1 + 3) + (1 + 2)
