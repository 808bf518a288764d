"""The eval harness: same pipeline, caches, run files, compare, calibrate, report."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from eval.calibrate import calibrate
from eval.compare import flips, render_comparison
from eval.datasets import DatasetError, load_dataset
from eval.metrics import evaluate
from eval.report import plot_runs
from eval.run import EvalConfig, load_run, run_eval, save_run
from retrieval.branches import BranchConfig, BranchStage
from retrieval.calibration.scoring import Calibration, ShortlistMatrix, beats, best_threshold
from retrieval.decision import Threshold, choose
from retrieval.fusion import Aggregation, Candidate
from retrieval.index import LabelIndex
from retrieval.lexical import LexicalStage
from retrieval.subqueries import SubqueryStage
from service.engine import open_engine
from service.factory import build_pipeline
from tests.conftest import make_settings
from tests.fake_openai import FakeOpenAI, Reply

GOLD = [
    {"id": "1", "text": "my kitten bites my hands", "labels": ["pets.cats"]},
    {"id": "2", "text": "the puppy chewed my shoes", "labels": ["pets.dogs"]},
    {"id": "3", "text": "when is the tax filing deadline", "labels": ["money.taxes"]},
    {"id": "4", "text": "how long should bread proof", "labels": ["food.baking"]},
    {"id": "5", "text": "the moons of jupiter are icy", "labels": []},
    {"id": "6", "text": "my dog drank my cold brew coffee",
     "labels": ["pets.dogs", "food.coffee"]},
]


@pytest.fixture
def dataset_path(tmp_path: Path) -> Path:
    path = tmp_path / "gold" / "valid.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(json.dumps(row) for row in GOLD) + "\n")
    return path


def run(tmp_path: Path, index: LabelIndex, dataset_path: Path, **settings) -> dict:
    config = EvalConfig(mode=settings.pop("mode", "retrieval"), cache_dir=tmp_path / "cache")
    engine = open_engine(make_settings(tmp_path, **settings), index=index)
    return run_eval(engine, load_dataset(dataset_path), config)


def test_run_records_what_it_needs(tmp_path: Path, mini_index: LabelIndex,
                                   dataset_path: Path) -> None:
    record = run(tmp_path, mini_index, dataset_path, threshold=0.3)
    assert record["dataset"]["n"] == 6 and len(record["predictions"]) == 6
    assert record["index"]["embedder"] == "all-MiniLM-L6-v2" and record["index"]["catalog_hash"]
    assert record["settings"]["threshold"] == 0.3 and "llm_api_key" not in record["settings"]
    assert record["predictions"][0]["labels"] == ["pets.cats"]
    assert record["metrics"]["candidate_recall@30"] == 1.0
    assert 0 < record["metrics"]["f1_samples"] <= 1


def test_run_files_round_trip_and_never_overwrite(tmp_path: Path, mini_index: LabelIndex,
                                                  dataset_path: Path) -> None:
    record = run(tmp_path, mini_index, dataset_path)
    first, second = save_run(record, tmp_path / "runs"), save_run(record, tmp_path / "runs")
    assert first != second and load_run(first) == record == load_run(second)


def test_retrieval_cache_hits_and_misses(tmp_path: Path, mini_index: LabelIndex,
                                         dataset_path: Path) -> None:
    cold = run(tmp_path, mini_index, dataset_path)
    warm = run(tmp_path, mini_index, dataset_path)
    assert (cold["totals"]["cache_hits"], cold["totals"]["cache_misses"]) == (0, 6)
    assert (warm["totals"]["cache_hits"], warm["totals"]["cache_misses"]) == (6, 0)
    assert warm["predictions"] == cold["predictions"]
    other = run(tmp_path, mini_index, dataset_path, rrf_k=60)  # retrieval settings changed
    assert other["totals"]["cache_misses"] == 6
    mini_index.add_examples("pets.cats", ["a cat on the keyboard"])  # index changed
    assert run(tmp_path, mini_index, dataset_path)["totals"]["cache_misses"] == 6


def test_llm_cache_makes_reruns_free(tmp_path: Path, mini_index: LabelIndex,
                                     dataset_path: Path, fake_llm: FakeOpenAI) -> None:
    fake_llm.default = Reply.labels("C01", usage=(100, 5))
    llm = {"mode": "llm", "llm_base_url": fake_llm.base_url, "llm_api_key": "k",
           "llm_max_attempts": 1, "llm_model": "fake-model"}
    first = run(tmp_path, mini_index, dataset_path, **llm)
    assert fake_llm.request_count == 6 and first["totals"]["prompt_tokens"] == 600
    assert first["totals"]["cost_usd"] is None  # "fake-model" has no price
    again = run(tmp_path, mini_index, dataset_path, **llm)
    assert fake_llm.request_count == 6  # nothing sent
    labels = [r["labels"] for r in first["predictions"]]
    assert [r["labels"] for r in again["predictions"]] == labels
    assert again["totals"]["cached_llm"] == 6 and again["totals"]["llm_calls"] == 0
    run(tmp_path, mini_index, dataset_path, llm_temperature=0.7, **llm)  # parameters changed
    assert fake_llm.request_count == 12
    priced = run(tmp_path, mini_index, dataset_path, **{**llm, "llm_model": "gpt-4o-mini"})
    assert fake_llm.request_count == 18  # another model is another cache key
    assert priced["totals"]["cost_usd"] == pytest.approx((600 * 0.15 + 30 * 0.60) / 1e6)
    assert first["prompt"]["task"] == "select_labels" and len(first["prompt"]["sha256"]) == 64


def test_compare_lists_flipped_texts(tmp_path: Path, mini_index: LabelIndex,
                                     dataset_path: Path) -> None:
    strict = run(tmp_path, mini_index, dataset_path, threshold=0.9)
    loose = run(tmp_path, mini_index, dataset_path, threshold=0.3)
    changed = flips(strict, loose)
    assert any(f.id == "2" and f.gained == ["pets.dogs"] for f in changed)
    text = render_comparison(strict, loose, "strict", "loose")
    assert "setting threshold: 0.9 -> 0.3" in text and "f1_samples" in text
    assert "[2] 'the puppy chewed my shoes'" in text


def test_report_png_is_written(tmp_path: Path, mini_index: LabelIndex,
                               dataset_path: Path) -> None:
    record = run(tmp_path, mini_index, dataset_path)
    out = plot_runs([("a", record), ("b", record)], tmp_path / "report.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def planted_shortlists(seed: int = 7) -> tuple[list[list[Candidate]], list[list[str]]]:
    """In-scope texts have their gold label on top at similarity >= 0.65; out-of-scope < 0.55."""
    rng = random.Random(seed)
    shortlists, gold = [], []
    for i in range(200):
        in_scope = i % 3 != 0
        top = rng.uniform(0.65, 0.95) if in_scope else rng.uniform(0.2, 0.549)
        cands = [Candidate("gold" if in_scope else "x0", 1.0, top)]
        cands += [Candidate(f"x{j}", 0.5 / j, top - 0.05 * j) for j in range(1, 6)]
        shortlists.append(cands)
        gold.append(["gold"] if in_scope else [])
    return shortlists, gold


def test_calibration_recovers_a_planted_threshold() -> None:
    shortlists, gold = planted_shortlists()
    rule, value = best_threshold(ShortlistMatrix(shortlists, gold), "accuracy", [1, 2])
    assert value == 1.0 and rule.max_labels == 1
    assert 0.55 <= rule.min_similarity <= 0.65


@pytest.mark.parametrize("metric", ["f1_samples", "jaccard", "accuracy", "f1_micro"])
def test_fast_scorer_agrees_with_the_metrics_module(metric: str) -> None:
    rng = random.Random(3)
    shortlists, gold = [], []
    for _ in range(150):
        cands = sorted((Candidate(f"l{rng.randrange(12)}", rng.random(), rng.random())
                        for _ in range(8)), key=lambda c: -c.score)
        cands = list({c.label_id: c for c in reversed(cands)}.values())[::-1]
        shortlists.append(sorted(cands, key=lambda c: -c.score))
        gold.append(rng.sample([f"l{i}" for i in range(12)], rng.choice([0, 1, 1, 2])))
    rule = Threshold(0.4, 0.5, 1 if metric == "accuracy" else 3)
    predicted = [[c.label_id for c in choose(s, rule)] for s in shortlists]
    expected = evaluate(gold, predicted, [[] for _ in gold])
    if metric == "accuracy":
        expected["accuracy"] = sum(set(p[:1]) == set(g) for g, p in zip(gold, predicted,
                                                                          strict=True)) / 150
    assert ShortlistMatrix(shortlists, gold).score(rule, metric) == pytest.approx(expected[metric])


def test_calibrate_on_a_real_index_refuses_test_splits(tmp_path: Path, mini_index: LabelIndex,
                                                       dataset_path: Path) -> None:
    pipeline = build_pipeline(make_settings(tmp_path), index=mini_index)
    best, table = calibrate(pipeline, load_dataset(dataset_path))
    flat = [c for c in table if not c.stages]
    # every aggregation at every neighbour depth, then lexical, sub-queries, branch mode
    assert best.metric == "f1_samples" and len(flat) == 13 * 3
    assert {c.neighbours for c in flat} == {50, 100, 200}
    assert any(c.stage(LexicalStage) for c in table) and any(c.stage(SubqueryStage)
                                                             for c in table)
    branches = [c.stage_settings["branches"] for c in table if c.stage(BranchStage)]
    assert branches == [1, 2, 3, 5]
    assert best.value >= max(c.value for c in flat)
    assert all(c.texts_per_s > 0 and c.n == len(GOLD) for c in table)
    assert best.settings()["retrieval_mode"] == ("branch" if best.stage(BranchStage) else "flat")
    test_split = dataset_path.with_name("test.jsonl")
    test_split.write_text(dataset_path.read_text())
    with pytest.raises(DatasetError, match="test split"):
        calibrate(pipeline, load_dataset(test_split))


def test_branch_mode_must_beat_flat_by_more_than_noise() -> None:
    flat = Calibration(Aggregation(), Threshold(0.4, 0.5, 3), "accuracy", 0.900, 0.95)

    def branch(value: float, recall: float) -> Calibration:
        return replace(flat, value=value, candidate_recall=recall,
                       stages=(BranchStage(BranchConfig()),))

    margin = BranchStage.margin
    assert not beats(branch(0.902, 0.95), flat, margin)  # a dev win within noise stays flat
    assert beats(branch(0.910, 0.90), flat, margin)
    assert beats(branch(0.900, 0.99), flat, margin)  # same score, a higher ceiling for the LLM
    assert not beats(branch(0.899, 0.99), flat, margin)


def test_halves_partition_the_dataset(dataset_path: Path) -> None:
    a, b = load_dataset(dataset_path, half="a"), load_dataset(dataset_path, half="b")
    ids = sorted(e.id for e in a.examples + b.examples)
    assert ids == sorted(row["id"] for row in GOLD) and a.sha256 != b.sha256


def test_sample_is_stable_and_spread(dataset_path: Path) -> None:
    first, again = load_dataset(dataset_path, sample=3), load_dataset(dataset_path, sample=3)
    assert [e.id for e in first.examples] == [e.id for e in again.examples]
    assert len(first.examples) == 3 and first.sha256.endswith(":sample3")
