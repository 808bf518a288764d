"""Self-calibration in proportion to the index (real Chroma, real embedder): the plan that
bounds its work (screening, a shorter grid, fewer pseudo-queries on a small catalog, stage
outputs reused), the budget of work (the same stop on a slower machine), its progress, and the
same answer every run."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from retrieval.calibration import work as work_meter
from retrieval.calibration.scoring import Calibration
from retrieval.calibration.search import SearchLog, SearchSpace, _Runner, search_settings
from retrieval.calibration.work import WorkMeter
from retrieval.catalog import load_catalog
from retrieval.fusion import Aggregation
from retrieval.index import LabelIndex, chroma_client
from retrieval.subqueries import SubqueryStage
from service.factory import search_space
from service.jobs.self_calibration import pseudo_texts, self_calibrate, summary
from service.settings import Settings
from tests.conftest import make_settings
from tests.test_self_calibration import SKILLS

TEXTS = ["sourdough, espresso, tax return", "my puppy chews shoes and the sofa",
         "when are taxes due", "my kitten keeps biting my fingers", "dogs and cats",
         "fresh bread and strong coffee"]
GOLD = [["food.baking", "food.coffee", "money.taxes"], ["pets.dogs"], ["money.taxes"],
        ["pets.cats"], ["pets.dogs", "pets.cats"], ["food.baking", "food.coffee"]]
AGGREGATIONS = (Aggregation("max", 0, None), Aggregation(), Aggregation("rrf", 10.0, 3))


@pytest.fixture(scope="module")
def skills(tmp_path_factory: pytest.TempPathFactory, embedder) -> LabelIndex:
    """The names-and-aliases catalog in a real Chroma index."""
    index = LabelIndex(chroma_client(tmp_path_factory.mktemp("skills") / "db"), embedder)
    index.sync(load_catalog(SKILLS))
    return index


def search(index: LabelIndex, **fields: object) -> tuple[object, list, SearchLog]:
    log = SearchLog()
    space = search_space(Settings(_env_file=None), **{
        "aggregations": AGGREGATIONS, "depths": (30, 50), "levers": {"branches": ()}, **fields})
    best, results = search_settings(index, TEXTS, GOLD, 5, "f1_samples", space, log=log)
    return best, results, log


def subqueries_alone(results: list[Calibration]) -> list[Calibration]:
    """The settings ranked with sub-queries as their one stage."""
    return [r for r in results if r.stage(SubqueryStage) and len(r.stages) == 1]


def test_screening_ranks_only_a_sampled_kinds_best_variant_on_the_whole_sample(
        readonly_index: LabelIndex) -> None:
    only = {"branches": (), "token_match_weight": ()}  # sub-queries: the one sampled kind
    _, everything, _ = search(readonly_index, levers=only)
    _, results, log = search(readonly_index, screen=1, levers=only)
    variants = 4 + 2 + 1  # neighbours x n-grams, then the weight, then the words per part
    alone = subqueries_alone(everything)
    assert len(alone) == variants and all(r.n == len(TEXTS) for r in alone)
    screened = [r for r in results if r.stage(SubqueryStage) and r.n == 1]
    on_all = [r for r in subqueries_alone(results) if r.n == len(TEXTS)]
    # every variant of every round on the screening text; at most the best of them on all six
    out = "subqueries" in log.screened_out
    assert len(screened) == variants and len(on_all) == (0 if out else 1)
    assert log.texts_ranked < sum(r.n for r in everything)


def test_a_sample_under_four_screens_is_not_screened(readonly_index: LabelIndex) -> None:
    only = {"branches": (), "token_match_weight": ()}
    _, everything, _ = search(readonly_index, levers=only)
    _, results, log = search(readonly_index, screen=2, levers=only)  # 6 texts: under 4 x 2
    assert not log.screened_out and not any(r.n == 2 for r in results)
    assert [(r.describe(), r.value) for r in results] == [
        (r.describe(), r.value) for r in everything]


def test_under_a_budget_a_small_sample_is_screened_only_when_the_whole_would_not_fit(
        readonly_index: LabelIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    only = {"branches": (), "token_match_weight": ()}
    space = search_space(Settings(_env_file=None), aggregations=AGGREGATIONS, depths=(30, 50),
                         levers=only, screen=2)  # 6 texts: under 4 x 2

    def judged(far: float) -> tuple[list, SearchLog]:
        log = SearchLog()
        _, results = search_settings(readonly_index, TEXTS, GOLD, 5, "f1_samples", space,
                                     budget_s=far, log=log)
        return subqueries_alone(results), log

    _, everything, _ = search(readonly_index, levers=only)
    unscreened = [r.describe() for r in subqueries_alone(everything)]
    ample, _ = judged(3600.0)  # screened, then every variant on the whole sample as well
    assert [r.describe() for r in ample if r.n == len(TEXTS)] == unscreened
    assert any(r.n == 2 for r in ample)
    monkeypatch.setattr(_Runner, "affords", lambda self, work_s: False)
    short, log = judged(3600.0)  # the screen decides: at most its pick on the whole sample
    assert len([r for r in short if r.n == len(TEXTS)]) == (
        0 if "subqueries" in log.screened_out else 1)


def test_work_is_afforded_when_as_much_again_remains_after_it() -> None:
    runner = _Runner.__new__(_Runner)
    runner.memo = SimpleNamespace(meter=WorkMeter())
    runner.budget_s = None
    assert runner.affords(1e9)
    runner.budget_s = 110.0
    runner.memo.meter.charge("encode", 10.0, 0.0)
    assert runner.affords(50.0) and not runner.affords(51.0)


def test_a_shorter_grid_ranks_every_aggregation_once_and_the_best_at_every_depth(
        readonly_index: LabelIndex) -> None:
    space = SearchSpace(aggregations=AGGREGATIONS, depths=(30, 50, 100), grid_keep=1)
    _, results = search_settings(readonly_index, TEXTS, GOLD, 5, "f1_samples", space)
    assert [r.neighbours for r in results] == [50, 50, 50, 30, 100]
    best_at_50 = max(results[:3], key=lambda r: (r.value, r.candidate_recall))
    assert results[3].aggregation == results[4].aggregation == best_at_50.aggregation


def test_reused_stage_outputs_change_no_score(readonly_index: LabelIndex) -> None:
    best, results, log = search(readonly_index)
    again, recomputed, cold = search(readonly_index, reuse=False)
    assert log.reused > 0 and cold.reused == 0
    assert best.settings() == again.settings()
    assert [(r.describe(), r.value, r.n) for r in results] == [
        (r.describe(), r.value, r.n) for r in recomputed]


def test_a_spent_budget_keeps_the_grid_and_names_what_it_left(tmp_path: Path,
                                                             skills: LabelIndex) -> None:
    found = self_calibrate(make_settings(tmp_path, top_k=5, self_calibration_texts=60),
                           skills, budget_s=0.0)
    work = found.record["dev_set"]["work"]
    assert found.best is not None and not found.best.stages  # whole-text settings only
    assert all(not r.stages for r in found.results)
    assert work["budget_s"] == 0.0 and "subqueries" in work["budget_skipped"]
    assert "budget of 0 s of work spent, not tried: subqueries" in summary(found)


def comparable(record: dict) -> dict:
    """A calibration record without what the clock measured."""
    record = {k: v for k, v in record.items() if k not in ("created", "texts_per_s")}
    record["dev_set"] = {k: v for k, v in record["dev_set"].items() if k != "seconds"}
    return record


def test_a_slower_machine_stops_at_the_same_setting(tmp_path: Path, skills: LabelIndex,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path, top_k=5, self_calibration_texts=60)
    whole = self_calibrate(settings, skills).record["dev_set"]["work"]["work_s"]
    budget = whole * 0.75  # the grid is not budgeted: it stops among the stage kinds
    here = self_calibrate(settings, skills, budget_s=budget)
    # cut part way: a budgeted kind was ranked, and another left
    assert here.record["dev_set"]["work"]["budget_skipped"]
    assert any(r.stages for r in here.results)
    encode, slept = skills.embedder.embed, []

    def slow(texts: list[str]) -> object:
        slept.append(0.6 + 0.002 * len(texts))  # an encoder much slower than this one
        time.sleep(slept[-1])
        return encode(texts)

    monkeypatch.setattr(skills.embedder, "embed", slow)
    monkeypatch.setattr(work_meter, "WALL_FACTOR", 1e6)
    slower = self_calibrate(settings, skills, budget_s=budget)
    # slower by more than the budget itself: a wall-clock budget would have stopped elsewhere
    assert slower.seconds >= sum(slept) > budget
    assert comparable(slower.record) == comparable(here.record)
    assert [(r.describe(), r.value, r.n) for r in slower.results] == [
        (r.describe(), r.value, r.n) for r in here.results]


def test_on_a_far_slower_machine_the_wall_clock_stops_it_and_says_so(
        tmp_path: Path, skills: LabelIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(work_meter, "WALL_FACTOR", 0.0)
    found = self_calibrate(make_settings(tmp_path, top_k=5, self_calibration_texts=60),
                           skills, budget_s=1e6)
    work = found.record["dev_set"]["work"]
    assert work["wall_clock_cut"] and "subqueries" in work["budget_skipped"]
    assert "wall-clock limit spent, not tried: subqueries" in summary(found)


def test_bounded_self_calibration_gives_the_same_answer_every_run(
        tmp_path: Path, skills: LabelIndex) -> None:
    settings = make_settings(tmp_path, top_k=5, self_calibration_texts=60)
    first = self_calibrate(settings, skills)
    second = self_calibrate(settings, skills)
    for record in (first.record, second.record):
        record.pop("created")
        record["dev_set"].pop("seconds")
        record.pop("texts_per_s")
    assert first.record == second.record
    assert [(r.describe(), r.value, r.n) for r in first.results] == [
        (r.describe(), r.value, r.n) for r in second.results]
    work = first.record["dev_set"]["work"]
    assert work["settings_ranked"] == len(first.results)
    assert work["texts_ranked"] == sum(r.n for r in first.results)


def test_progress_is_told_every_setting_ranked(tmp_path: Path, readonly_index: LabelIndex
                                               ) -> None:
    steps: list[tuple[str, int, int]] = []
    log = SearchLog(progress=lambda step, done, planned: steps.append((step, done, planned)))
    space = search_space(Settings(_env_file=None), aggregations=AGGREGATIONS, depths=(30,),
                         levers={"branches": ()})
    _, results = search_settings(readonly_index, TEXTS, GOLD, 5, "f1_samples", space, log=log)
    assert [done for _, done, _ in steps] == list(range(1, len(results) + 1))
    assert steps[0][0] == "grid" and all(planned >= done for _, done, planned in steps)
    assert {step for step, _, _ in steps} >= {"grid", "subqueries", "lexical_weight"}


def test_a_small_catalog_gets_fewer_pseudo_queries() -> None:
    assert pseudo_texts(400, 2_114) == 211  # the demo catalog
    assert pseudo_texts(400, 500) == 200 and pseudo_texts(400, 630_000) == 400
    assert pseudo_texts(60, 2_114) == 60  # never more than the setting asks
