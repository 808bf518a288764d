"""The ONNX backends against the torch embedder they are exported from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.catalog import load_catalog
from retrieval.embedder import (
    EmbedderLoadError,
    SentenceTransformerEmbedder,
    resolve_model_path,
)
from retrieval.fusion import Aggregation
from retrieval.index import LabelIndex, chroma_client
from retrieval.onnx_embedder import OnnxEmbedder, exported_graph
from retrieval.retriever import Retriever
from tests.conftest import MINI_CATALOG

TEXTS = [
    "my card was charged twice for the same coffee",
    "what's the weather tomorrow in Lisbon?",
    "x",
    "a much longer text " * 200,  # past the 256-token window: truncated like torch does
    "Übermäßig lange Wartezeit am Schalter, 😡",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def fp32(onnx_cache: Path) -> OnnxEmbedder:
    return OnnxEmbedder(precision="fp32", cache_dir=onnx_cache)


@pytest.fixture(scope="module")
def int8(onnx_cache: Path) -> OnnxEmbedder:
    return OnnxEmbedder(precision="int8", cache_dir=onnx_cache)


def test_fp32_export_reproduces_torch(embedder: SentenceTransformerEmbedder,
                                      fp32: OnnxEmbedder) -> None:
    expected = embedder.embed(TEXTS)
    got = fp32.embed(TEXTS)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.allclose(got, expected, atol=1e-4)


def test_int8_stays_close_to_torch(embedder: SentenceTransformerEmbedder,
                                   int8: OnnxEmbedder) -> None:
    cosines = (int8.embed(TEXTS) * embedder.embed(TEXTS)).sum(axis=1)
    assert cosines.min() > 0.97
    assert np.allclose(np.linalg.norm(int8.embed(TEXTS), axis=1), 1.0, atol=1e-5)


def test_batch_order_and_single_text_agree(fp32: OnnxEmbedder, int8: OnnxEmbedder) -> None:
    # Texts are regrouped by length inside embed(): rows must come back in input order.
    singles = np.vstack([fp32.embed([text]) for text in TEXTS])
    assert np.allclose(fp32.embed(TEXTS), singles, atol=1e-5)
    # int8 quantizes activations per batch, so a row moves slightly with its batch mates.
    int8_singles = np.vstack([int8.embed([text]) for text in TEXTS])
    cosines = int8.embed(TEXTS) @ int8_singles.T
    assert (np.diag(cosines) > 0.95).all()
    assert (np.argmax(cosines, axis=1) == np.arange(len(TEXTS))).all()
    assert int8.embed([]).shape == (0, int8.dim)


def test_export_is_cached(onnx_cache: Path, fp32: OnnxEmbedder) -> None:
    graph = exported_graph(resolve_model_path("all-MiniLM-L6-v2"), "fp32", onnx_cache)
    before = graph.stat().st_mtime_ns
    OnnxEmbedder(precision="fp32", cache_dir=onnx_cache)
    assert graph.stat().st_mtime_ns == before
    assert not list(graph.parent.glob("tmp*")), "no half-written exports left behind"


def test_index_built_with_torch_answers_int8_queries(tmp_path: Path,
                                                     embedder: SentenceTransformerEmbedder,
                                                     int8: OnnxEmbedder) -> None:
    # The backends share one embedding space, so they share indexes (same model name).
    LabelIndex(chroma_client(tmp_path), embedder).sync(load_catalog(MINI_CATALOG))
    query = ["how finely should I grind beans for espresso"]
    top = Retriever(LabelIndex(chroma_client(tmp_path), int8), Aggregation()).candidates(
        query, top_k=3)[0]
    torch_top = Retriever(LabelIndex(chroma_client(tmp_path), embedder), Aggregation()).candidates(
        query, top_k=3)[0]
    assert top[0].label_id == torch_top[0].label_id == "food.coffee"


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbedderLoadError, match="neither"):
        OnnxEmbedder(str(tmp_path / "missing"), cache_dir=tmp_path)
