"""What searching the infer step's phrases costs retrieval: ms per text on an index, without
phrases and with N phrases per text (word pairs of the text stand in for an LLM's phrases; the
LLM call itself is not timed, it depends on the endpoint).

    python -m bench.infer_phrases --db demo-db --texts service/demo_data/gold.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from service.engine import open_engine
from service.settings import Settings


def best_ms(run: Callable[[], object], texts: int, repeats: int) -> float:
    """The fastest of `repeats` runs, in ms per text."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times) * 1000 / texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--texts", type=Path, required=True, help="JSONL with a text field")
    parser.add_argument("--phrases", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    retriever = open_engine(Settings(db=args.db)).pipeline.retriever
    texts = [json.loads(line)["text"] for line in args.texts.read_text().splitlines() if line]
    phrases = [[" ".join(text.split()[i:i + 2]) for i in range(0, 2 * args.phrases, 2)
                if text.split()[i:i + 2]] for text in texts]
    retriever.candidates(texts, args.top_k)  # load the model, warm the index
    plain = best_ms(lambda: retriever.candidates(texts, args.top_k), len(texts), args.repeats)
    widened = best_ms(lambda: retriever.candidates(texts, args.top_k, phrases=phrases),
                      len(texts), args.repeats)
    print(f"{len(texts)} texts, {retriever.describe()}, best of {args.repeats}: "
          f"{plain:.1f} ms per text plain, {widened:.1f} ms with up to {args.phrases} phrases")


if __name__ == "__main__":
    main()
