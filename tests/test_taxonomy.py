"""Taxonomies: paths in results and prompts, subtree filters, branch mode, why a text got none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from retrieval.branches import BranchConfig, BranchStage, within_branches
from retrieval.calibration.scoring import ShortlistMatrix
from retrieval.catalog import Label
from retrieval.decision import Threshold, choose
from retrieval.embedder import Embedder
from retrieval.fusion import Aggregation, Candidate
from retrieval.index import LabelIndex
from retrieval.retriever import Retriever
from retrieval.taxonomy import Taxonomy, UnknownSubtreeError
from service.api.app import create_app
from service.factory import build_pipeline
from service.pipeline import ClassifyOptions, Pipeline
from tests.conftest import make_settings
from tests.fake_openai import FakeOpenAI, Reply
from tests.test_api import api_settings, wait_ready

RETRIEVAL = ClassifyOptions(mode="retrieval")
TWO_BRANCHES = "my dog knocked my espresso cup off the table"


@pytest.fixture
def pipeline(tmp_path: Path, mini_index: LabelIndex) -> Pipeline:
    return build_pipeline(make_settings(tmp_path, top_k=8, threshold=0.3,
                                        relative_threshold=0.1), index=mini_index)


def deep_taxonomy() -> Taxonomy:
    labels = [Label("a", "A", assignable=False), Label("a.b", "B", parent="a"),
              Label("a.b.c", "C", parent="a.b"), Label("a.b.d", "D", parent="a.b"),
              Label("e", "E")]
    return Taxonomy({lab.id: lab for lab in labels})


def test_taxonomy_paths_subtrees_and_branches() -> None:
    tax = deep_taxonomy()
    assert tax.path("a.b.c") == ("a", "a.b") and tax.path("e") == ()
    assert tax.subtree("a") == {"a", "a.b", "a.b.c", "a.b.d"}  # all descendants, not children
    assert tax.branch("a.b.c", 0) == "a" and tax.branch("a.b.c", 1) == "a.b"
    assert tax.branch("e", 1) == "e"  # shallower than the depth: its own branch
    assert tax.max_depth() == 2
    with pytest.raises(UnknownSubtreeError) as err:
        tax.subtree("nope")
    assert err.value.code == "unknown_subtree" and 400 <= err.value.status < 500


def test_branch_stage_keeps_the_strongest_branches_and_reaches_below_the_cut() -> None:
    tax = deep_taxonomy()
    pool = [Candidate("e", 1.0, 0.9), Candidate("a.b.c", 0.6, 0.8),
            Candidate("a.b.d", 0.5, 0.7), Candidate("a.b", 0.1, 0.5)]
    # Branch `a` sums 1.1 over the top 3 and beats `e` (1.0): with one branch, `e` goes and
    # `a.b`, below the flat cut of 3, comes in.
    one = within_branches(pool, tax, BranchConfig(depth=0, branches=1), top_k=3)
    assert [c.label_id for c in one] == ["a.b.c", "a.b.d", "a.b"]
    two = within_branches(pool, tax, BranchConfig(depth=0, branches=2), top_k=3)
    assert [c.label_id for c in two] == ["e", "a.b.c", "a.b.d"]


def test_results_carry_each_labels_path(pipeline: Pipeline) -> None:
    result = pipeline.classify(TWO_BRANCHES, RETRIEVAL)
    paths = {lab.id: lab.path for lab in result.candidates}
    assert paths["pets.dogs"] == ["pets"] and paths["food.coffee"] == ["food"]


def test_subtree_restricts_candidates_and_labels(pipeline: Pipeline) -> None:
    free = pipeline.classify(TWO_BRANCHES, RETRIEVAL)
    assert {"pets.dogs", "food.coffee"} <= {lab.id for lab in free.labels}
    within = pipeline.classify(TWO_BRANCHES, ClassifyOptions(mode="retrieval", subtree="food"))
    assert within.candidates and all(c.id.startswith("food.") for c in within.candidates)
    assert "food.coffee" in {lab.id for lab in within.labels}


def test_unknown_subtree_is_a_stable_error(pipeline: Pipeline) -> None:
    with pytest.raises(UnknownSubtreeError):
        pipeline.classify_batch([TWO_BRANCHES], ClassifyOptions(subtree="no-such-id"))


def test_none_reasons_say_why(pipeline: Pipeline, mini_index: LabelIndex) -> None:
    low = pipeline.classify("the eigenvalues of a symmetric matrix are real", RETRIEVAL)
    assert low.labels == [] and low.none_reason == "below_threshold"
    mini_index.upsert(Label("empty", "An empty group", assignable=False))
    empty = pipeline.classify(TWO_BRANCHES, ClassifyOptions(mode="retrieval", subtree="empty"))
    assert empty.labels == [] and empty.candidates == []
    assert empty.none_reason == "subtree_empty" and "empty" in (empty.reason or "")
    assert pipeline.classify(TWO_BRANCHES, RETRIEVAL).none_reason is None


def test_llm_rejecting_all_is_none_with_a_reason(llm_pipeline: Pipeline,
                                                 fake_llm: FakeOpenAI) -> None:
    fake_llm.enqueue(Reply.labels())
    result = llm_pipeline.classify(TWO_BRANCHES, ClassifyOptions(mode="llm"))
    assert result.labels == [] and result.none_reason == "llm_rejected_all"
    prompt = fake_llm.requests[0]["messages"][-1]["content"]
    assert "path: Pets > Dogs" in prompt and "path: Food > Coffee" in prompt


def test_llm_may_answer_across_branches(llm_pipeline: Pipeline, fake_llm: FakeOpenAI) -> None:
    fake_llm.enqueue(lambda req: Reply.labels(*_slots(req, "Dogs", "Coffee")))
    result = llm_pipeline.classify(TWO_BRANCHES, ClassifyOptions(mode="llm"))
    assert {lab.id for lab in result.labels} == {"pets.dogs", "food.coffee"}


def test_branch_mode_one_branch_or_several(mini_index: LabelIndex) -> None:
    def retriever(branches: int) -> Retriever:
        return Retriever(mini_index, Aggregation(), 30,
                         stages=[BranchStage(BranchConfig(0, branches))])

    tax = Taxonomy(mini_index.labels)
    one = retriever(1).candidates([TWO_BRANCHES], 6)[0]
    assert len({tax.branch(c.label_id, 0) for c in one}) == 1
    two = retriever(2).candidates([TWO_BRANCHES], 6)[0]
    assert {"pets.dogs", "food.coffee"} <= {c.label_id for c in two}


@pytest.fixture
def client(tmp_path: Path, mini_index: LabelIndex, embedder: Embedder) -> Iterator[TestClient]:
    app = create_app(api_settings(tmp_path), load_embedder=lambda: embedder)
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def test_api_lists_a_subtree_with_paths(client: TestClient) -> None:
    put = client.put("/v1/labels/pets.dogs.terriers", json={"name": "Terriers",
                                                            "parent": "pets.dogs"})
    assert put.status_code == 200 and put.json()["label"]["path"] == ["pets", "pets.dogs"]
    answer = client.get("/v1/labels", params={"subtree": "pets"})
    assert answer.status_code == 200, answer.text
    items = {item["id"]: item["path"] for item in answer.json()["items"]}
    assert items == {"pets": [], "pets.cats": ["pets"], "pets.dogs": ["pets"],
                     "pets.dogs.terriers": ["pets", "pets.dogs"]}
    missing = client.get("/v1/labels", params={"subtree": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_subtree"


def test_api_classifies_within_a_subtree(client: TestClient) -> None:
    body = {"text": TWO_BRANCHES, "mode": "retrieval", "subtree": "food"}
    answer = client.post("/v1/classify", json=body)
    assert answer.status_code == 200, answer.text
    assert all(c["path"] == ["food"] for c in answer.json()["candidates"])
    missing = client.post("/v1/classify", json={**body, "subtree": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_subtree"
    batch = client.post("/v1/classify/batch",
                        json={"items": [{"text": TWO_BRANCHES}], "mode": "retrieval",
                              "subtree": "pets"})
    assert batch.status_code == 200
    assert {c["id"] for c in batch.json()["results"][0]["candidates"]} <= {"pets.dogs",
                                                                           "pets.cats"}


def _slots(request: dict, *names: str) -> list[str]:
    from tests.test_llm_selection import slots_in_prompt

    listed = slots_in_prompt(request)
    return [slot for slot, name in listed.items() if name in names]


def test_per_branch_relative_threshold_keeps_a_second_branch() -> None:
    tax = deep_taxonomy()

    def branch(label_id: str) -> str:
        return tax.branch(label_id, 0)

    cands = [Candidate("e", 1.0, 0.8), Candidate("a.b.c", 0.3, 0.6), Candidate("a.b.d", 0.1, 0.5)]
    overall, per_branch = Threshold(0.45, 0.5, 3), Threshold(0.45, 0.5, 3, per_branch=True)
    assert [c.label_id for c in choose(cands, overall, branch)] == ["e"]
    # a.b.c leads its own branch; a.b.d has a third of that branch's top score
    assert [c.label_id for c in choose(cands, per_branch, branch)] == ["e", "a.b.c"]
    matrices = ShortlistMatrix([cands], [["e", "a.b.c"]], branch)
    assert matrices.score(per_branch, "f1_samples") == 1.0
    assert matrices.score(overall, "f1_samples") == pytest.approx(2 / 3)


def test_pipeline_relative_threshold_per_branch(tmp_path: Path, mini_index: LabelIndex) -> None:
    def labels(**overrides: object) -> set[str]:
        settings = make_settings(tmp_path, top_k=8, threshold=0.3, relative_threshold=0.95,
                                 **overrides)
        result = build_pipeline(settings, index=mini_index).classify(TWO_BRANCHES, RETRIEVAL)
        return {lab.id for lab in result.labels}

    assert len(labels()) == 1
    assert labels(relative_per_branch=True) == {"pets.dogs", "food.coffee"}
