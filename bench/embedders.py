"""The embedder backends side by side on the same real texts, in one run: batch texts/s,
single-text latency, and agreement with torch (cosine of each text's two vectors).

    python bench/embedders.py --texts 3000 --singles 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.onnx_embedder import OnnxEmbedder

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--singles", type=int, default=200)
    opts = parser.parse_args()
    with (DATA / "clinc150" / "train.jsonl").open() as handle:
        texts = [json.loads(line)["text"] for line in handle][:opts.texts]
    cache = Path(tempfile.mkdtemp(prefix="lr-onnx-"))
    started = time.perf_counter()
    backends = {"torch": SentenceTransformerEmbedder(),
                "onnx": OnnxEmbedder(precision="fp32", cache_dir=cache),
                "onnx-int8": OnnxEmbedder(precision="int8", cache_dir=cache)}
    print(f"loaded and exported in {time.perf_counter() - started:.1f} s")
    vectors = {}
    for name, embedder in backends.items():
        embedder.embed(texts[:64])
        started = time.perf_counter()
        vectors[name] = embedder.embed(texts)
        rate = len(texts) / (time.perf_counter() - started)
        latencies = []
        for text in texts[:opts.singles]:
            started = time.perf_counter()
            embedder.embed([text])
            latencies.append((time.perf_counter() - started) * 1000)
        cosine = (vectors[name] * vectors["torch"]).sum(axis=1)
        print(f"{name:10s} batch {rate:6.0f} texts/s  single p50 {np.median(latencies):5.1f} ms"
              f"  cosine to torch min {cosine.min():.4f} mean {cosine.mean():.4f}")


if __name__ == "__main__":
    main()
