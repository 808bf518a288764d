"""Token matching over the shortlist (retrieval/late_interaction.py) against sub-queries.

Per dataset, on its report half `b`: today's self-calibrated default, sub-queries (n-grams up
to 3 words, as LABELRANK_SUBQUERIES=3 sets them) or the whole text alone (whichever the default
is not), token matching on top of each at every weight (label-side MaxSim), over a 2x deeper
pool, and in ColBERT's direction (text-side) on the default. RP@5, RP@10,
candidate recall@K and texts/s; the weight marked `chosen` is the best RP@10 on half `a`.
Indexes are built once with `labelrank index` (it self-calibrates) and reused; CLINC150 is
indexed without its train texts, as a catalog of names only. Test splits are never read.

    python -m bench.late_interaction --out /tmp/lr-tokens.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from eval.datasets import Dataset, load_dataset
from eval.metrics import evaluate
from retrieval.fusion import Aggregation
from retrieval.index import LabelIndex
from retrieval.late_interaction import Direction, TokenCache, TokenMatchStage
from retrieval.retriever import Retriever
from retrieval.stages import CandidateStage
from service.factory import build_index, build_stages, effective_settings
from service.settings import Settings

DATA = Path("/work/shared/datasets")


@dataclass(frozen=True)
class Spec:
    """A catalog, its index directory and its evaluation file."""

    catalog: Path
    db: Path
    split: Path
    sample: int | None = None  # texts per half (a stable sample), for large splits


SPECS = {
    "esco-tech": Spec(DATA / "esco/catalog.jsonl", Path("/tmp/esco-db"),
                      DATA / "esco/tech_valid.jsonl"),
    "esco-house": Spec(DATA / "esco/catalog.jsonl", Path("/tmp/esco-db"),
                       DATA / "esco/house_valid.jsonl"),
    "clinc150": Spec(DATA / "clinc150/catalog.jsonl", Path("/tmp/clinc-noex-db"),
                     DATA / "clinc150/valid.jsonl", sample=300),
}


def open_index(spec: Spec) -> tuple[LabelIndex, Settings]:
    """The index (built with `labelrank index` on first use) and its effective settings."""
    if not (spec.db / "chroma.sqlite3").is_file():
        subprocess.run([str(Path(sys.executable).parent / "labelrank"), "index",
                        str(spec.catalog), "--db", str(spec.db)], check=True)
    settings = Settings(db=spec.db)
    index = build_index(settings)
    return index, effective_settings(settings, index)


def with_tokens(stages: list[CandidateStage], stage: TokenMatchStage) -> list[CandidateStage]:
    """The stages with token matching after sub-queries and lexical, before branch mode."""
    at = next((n for n, s in enumerate(stages) if type(s).__name__ == "BranchStage"),
              len(stages))
    return [*stages[:at], stage, *stages[at:]]


def measure(index: LabelIndex, settings: Settings, stages: list[CandidateStage],
            data: Dataset, top_k: int) -> dict[str, float]:
    """RP@1 (top-1 accuracy on single-label sets), RP@5, RP@10, candidate recall@top_k and
    texts/s of one retrieval setting."""
    aggregation = Aggregation(settings.aggregation, settings.rrf_k,
                              settings.max_hits_per_label or None)
    retriever = Retriever(index, aggregation, settings.neighbours, stages, evidence=False)
    texts = [e.text for e in data.examples]
    started = time.perf_counter()
    shortlists = retriever.candidates(texts, top_k)
    seconds = time.perf_counter() - started
    ranked = [[c.label_id for c in pool] for pool in shortlists]
    gold = [list(e.labels) for e in data.examples]
    scores = evaluate(gold, [[] for _ in gold], ranked, ks=(1, 5, 10), candidate_k=top_k)
    return {"method": retriever.describe(), "RP@1": 100 * scores["RP@1"],
            "RP@5": 100 * scores["RP@5"],
            "RP@10": 100 * scores["RP@10"], "recall@K": 100 * scores[f"candidate_recall@{top_k}"],
            "texts_per_s": len(texts) / seconds}


def run(name: str, weights: list[float], top_k: int,
        only: set[str] | None = None) -> list[dict]:
    """Every row of one dataset (or those of the bases in `only`), measured on half a (for
    the choice) and half b."""
    spec = SPECS[name]
    index, settings = open_index(spec)
    halves = {h: load_dataset(spec.split, half=h, sample=spec.sample) for h in ("a", "b")}
    subqueries = settings.model_copy(update={"subqueries": 3})
    cache = TokenCache()  # shared by every row: a server keeps it warm

    def token_stage(weight: float, direction: Direction = "label",
                    widen: int = 1) -> TokenMatchStage:
        stage = TokenMatchStage(weight, direction, widen)
        stage.cache = cache
        return stage

    rows: list[tuple[str, Settings, list[CandidateStage], str]] = [
        ("default (self-calibrated)", settings, build_stages(settings), "")]
    bases = [("default", settings)]
    if subqueries != settings:  # else self-calibration chose them: the rows would repeat
        rows.append(("sub-queries n<=3", subqueries, build_stages(subqueries), ""))
        bases.append(("sub-queries", subqueries))
    whole = settings.model_copy(update={"subqueries": 0})
    if whole != settings:  # can token matching stand in for sub-queries, at a fraction of the cost?
        rows.append(("whole text (no sub-queries)", whole, build_stages(whole), ""))
        bases.append(("whole text", whole))
    for base_name, base in bases:
        rows += [(f"{base_name} + tokens({w:g})", base,
                  with_tokens(build_stages(base), token_stage(w)), f"{base_name}+tokens")
                 for w in weights]
    rows += [(f"default + tokens({w:g}) over a 2x deeper pool", settings,
              with_tokens(build_stages(settings), token_stage(w, widen=2)), "default+tokens-x2")
             for w in weights]
    rows += [(f"default + tokens-text({w:g})", settings,
              with_tokens(build_stages(settings), token_stage(w, "text")), "default+tokens-text")
             for w in weights]
    rows = [r for r in rows if only is None or r[0].startswith(tuple(only))]
    out = []
    for row, row_settings, stages, family in rows:
        result = {"dataset": name, "row": row, "family": family,
                  "n_b": len(halves["b"].examples)}
        for half, data in halves.items():
            scores = measure(index, row_settings, stages, data, top_k)
            result.update({f"{k}_{half}" if k != "method" else k: v for k, v in scores.items()})
        print(json.dumps(result), file=sys.stderr, flush=True)
        out.append(result)
    for family in {r["family"] for r in out if r["family"]}:
        best = max((r for r in out if r["family"] == family), key=lambda r: r["RP@10_a"])
        best["chosen"] = True
    return out


def table(rows: list[dict]) -> str:
    """A markdown table of the half-b figures."""
    lines = ["| set (n, half b) | row | method | RP@1 | RP@5 | RP@10 | recall@K | texts/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " (chosen on a)" if r.get("chosen") else ""
        lines.append(f"| {r['dataset']} ({r['n_b']}) | {r['row']}{mark} | `{r['method']}` | "
                     f"{r['RP@1_b']:.1f} | {r['RP@5_b']:.1f} | {r['RP@10_b']:.1f} | "
                     f"{r['recall@K_b']:.1f} | {r['texts_per_s_b']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--weights", nargs="+", type=float, default=[0.2, 0.35, 0.5])
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", nargs="+", help="rows whose name starts so, e.g. 'whole text'")
    args = parser.parse_args()
    only = set(args.only) if args.only else None
    rows = [row for name in args.datasets for row in run(name, args.weights, args.top_k, only)]
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
