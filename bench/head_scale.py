"""Training time and peak memory of the learned head at 1,000, 3,000 and 30,000 labels.

A synthetic catalog stands in for the examples' embeddings: each label a random unit centre,
its examples that centre plus noise (unit vectors, 384 dims as MiniLM), some labels near each
other so that hard negatives are hard. Each size runs in a fresh process, so that its peak
resident memory is its own; "training peak" is that peak above the process holding the data.
Reading the examples out of Chroma (`train_index_head`) is not part of the figure.

    python bench/head_scale.py --labels 1000 3000 30000 --examples 20
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from dataclasses import replace

import numpy as np

from retrieval.head_train import TrainConfig, fit_head
from service.jobs.indexing import head_config
from service.settings import Settings

DIM = 384


def catalog(labels: int, examples: int, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """Unit example vectors and their label sets: label clusters, every tenth label a near twin
    of the one before it."""
    rng = np.random.default_rng(seed)
    # float32 throughout: float64 temporaries of 600,000 x 384 would set the peak the training
    # figure is measured above.
    centres = rng.standard_normal(size=(labels, DIM), dtype=np.float32)
    centres[1::10] = centres[::10][: len(centres[1::10])] + 0.5 * centres[1::10]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owner = np.repeat(np.arange(labels), examples)
    vectors = centres[owner]
    vectors += 0.06 * rng.standard_normal(size=(len(owner), DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, [[int(label)] for label in owner]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(labels: int, examples: int, config: TrainConfig) -> dict[str, float]:
    """One size, in this process: seconds, epochs done, peak memory with and without training."""
    vectors, label_sets = catalog(labels, examples)
    import torch  # loaded before the baseline, as it is in a serving process

    torch.set_num_threads(torch.get_num_threads())
    data_peak = _peak_mb()
    started = time.perf_counter()
    fitted = fit_head(vectors, label_sets, labels, config)
    seconds = time.perf_counter() - started
    peak = _peak_mb()  # before the check below, whose logits are no part of training
    checked = np.arange(0, labels, max(1, labels // 1000))  # first examples of <= 1,000 labels
    logits = vectors[checked * examples] @ fitted.weights.T + fitted.biases
    right = float(np.mean(np.argmax(logits, axis=1) == checked))
    return {"labels": labels, "examples": len(vectors), "seconds": round(seconds, 1),
            "work_s": round(fitted.work_s, 1),  # counted against --max-seconds
            "epochs": fitted.epochs, "peak_mb": round(peak), "data_mb": round(data_peak),
            "training_peak_mb": round(peak - data_peak), "train_top1": round(right, 4)}


def _child(labels: int, examples: int, config: TrainConfig, out) -> None:
    out.put(measure(labels, examples, config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[1000, 3000, 30000])
    parser.add_argument("--examples", type=int, default=20, help="per label")
    defaults = head_config(Settings(_env_file=None))
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds,
                        help="Training's budget, in seconds of work (retrieval/head_train.py).")
    parser.add_argument("--mode", choices=["ovr", "softmax"], default=defaults.mode)
    args = parser.parse_args()
    config = replace(defaults, epochs=args.epochs, max_seconds=args.max_seconds,
                     mode=args.mode)
    context = multiprocessing.get_context("spawn")
    for labels in args.labels:
        queue = context.Queue()
        process = context.Process(target=_child, args=(labels, args.examples, config, queue))
        process.start()
        print(json.dumps(queue.get()), flush=True)
        process.join()


if __name__ == "__main__":
    main()
