"""The learned head (real Chroma, real MiniLM): trained on the labels' examples, it reorders the
shortlist; labels added, changed and deleted after training keep working and are counted; it
survives a reopen and a compaction; a catalog without examples gets none."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from eval.cli import app
from retrieval import head_train
from retrieval.calibration import work as work_meter
from retrieval.calibration.held_out import HeldOutIndex
from retrieval.catalog import Catalog, Label, load_catalog
from retrieval.embedder import Embedder
from retrieval.fusion import Aggregation
from retrieval.head import HeadStage
from retrieval.head_train import (
    TrainConfig,
    _hard_negatives,
    _padded,
    _prototypes,
    batch_gradients,
    fit_head,
)
from retrieval.index import LabelIndex, chroma_client
from retrieval.retriever import Retriever
from service.engine import open_engine
from service.factory import build_pipeline
from service.jobs.indexing import train_head
from service.jobs.self_calibration import head_without, self_calibrate, shape_record
from tests.conftest import MINI_CATALOG, make_settings

EXAMPLES = {
    "card_lost": ["I lost my card", "my card was stolen", "I can't find my debit card anywhere",
                  "someone took my wallet with my card in it", "report a missing card",
                  "my credit card is gone", "my card got stolen at the mall",
                  "I misplaced my bank card"],
    "card_declined": ["my card was declined", "payment with my card failed",
                      "why was my card refused at the shop", "the terminal rejected my card",
                      "my card is not accepted online", "transaction declined at the store",
                      "my card keeps getting declined", "card payment did not go through",
                      "my card was stolen last week and the new one gets declined",
                      "declined at the atm"],
    "refund": ["I want my money back", "how do I get a refund for my order",
               "return an item and get reimbursed", "the refund has not arrived",
               "request a refund for a cancelled purchase", "can I be refunded for this",
               "refund to my card please", "when will I get my refund",
               "the shop owes me money for the item I sent back"],
    "transfer": ["send money to my friend", "how do I transfer funds to another account",
                 "wire money abroad", "my transfer has not arrived",
                 "move money between my accounts", "how long does a bank transfer take",
                 "transfer to a new recipient", "pay someone by bank transfer",
                 "the money never reached my friend's bank"],
    "balance": ["what is my balance", "how much money do I have", "check my account balance",
                "show me my available funds", "balance on my savings account",
                "how much is left in my account", "current balance please",
                "what's in my checking account"],
    "pin": ["change my pin", "I forgot my pin number", "reset the pin on my card",
            "my pin is blocked", "how do I set a new pin", "pin locked after wrong attempts",
            "unblock my pin", "where can I change my card pin"],
}
# Texts none of the examples are, with their label.
QUERIES = {
    "atm said no": "card_declined", "the cashier said my card is invalid": "card_declined",
    "forgot the four digit code for my card": "pin", "send funds": "transfer",
    "the atm says wrong code": "pin", "I dropped my card somewhere": "card_lost",
    "the seller has not returned my money": "refund", "do I have enough money": "balance",
    "my friend did not get the money": "transfer", "card refused": "card_declined",
}
RRF = Aggregation("rrf", 1.0, 3)  # the shape default for catalogs with examples


def banking() -> Catalog:
    return Catalog({lid: Label(id=lid, name=lid.replace("_", " "), examples=tuple(texts))
                    for lid, texts in EXAMPLES.items()})


@pytest.fixture
def index(tmp_path: Path, embedder: Embedder) -> LabelIndex:
    """The banking catalog indexed, its head trained with the default settings."""
    index = LabelIndex(chroma_client(tmp_path / "db"), embedder)
    index.sync(banking())
    assert train_head(make_settings(tmp_path), index).startswith("head: trained")
    return index


def top(index: LabelIndex, texts: list[str], weight: float = 0.5) -> list[str]:
    stages = [HeadStage(weight)] if weight else []
    return [row[0].label_id for row in Retriever(index, RRF, stages=stages).candidates(texts, 5)]


def status(index: LabelIndex) -> tuple[int, int, int, int]:
    head = index.head()
    assert head is not None
    found = head.status([lid for lid, lab in index.labels.items() if lab.assignable])
    return found.trained, found.new, found.stale, found.no_examples


def test_the_head_is_trained_and_reorders_where_positions_are_wrong(index: LabelIndex) -> None:
    texts, gold = list(QUERIES), list(QUERIES.values())
    by_position, by_head = top(index, texts, 0), top(index, texts)
    right = [sum(a == g for a, g in zip(answers, gold, strict=True))
             for answers in (by_position, by_head)]
    assert right[1] > right[0]
    assert any(p != g and h == g for p, h, g in zip(by_position, by_head, gold, strict=True))
    assert status(index) == (6, 0, 0, 0)


def test_the_stage_writes_the_mix_into_score_and_similarity(index: LabelIndex) -> None:
    texts = ["card refused", "change my pin"]
    plain = Retriever(index, RRF).candidates(texts, 5)
    mixed = Retriever(index, RRF, stages=[HeadStage(0.5)]).candidates(texts, 5)
    for before, after in zip(plain, mixed, strict=True):
        assert {c.label_id for c in before} == {c.label_id for c in after}
        assert [c.score for c in after] == sorted((c.score for c in after), reverse=True)
        assert all(c.score == c.similarity for c in after)
        similarity = {c.label_id: c.similarity for c in before}
        # w x probability + (1 - w) x similarity, the probability within [0, 1]
        assert all(0.5 * similarity[c.label_id] - 1e-6 <= c.score
                   <= 0.5 * similarity[c.label_id] + 0.5 + 1e-6 for c in after)


def test_a_label_added_after_training_is_answered_and_counted_new(index: LabelIndex) -> None:
    index.upsert(Label(id="crypto", name="crypto", examples=(
        "buy bitcoin", "sell my ethereum", "how do I open a crypto wallet",
        "can I trade cryptocurrency here")))
    assert status(index) == (6, 1, 0, 0)
    assert top(index, ["I would like to buy some bitcoin"]) == ["crypto"]
    assert open_engine(make_settings(Path("unused")), index).describe()["head"]["untrained"] == {
        "new": 1, "stale": 0, "no_examples": 0}


def test_changed_examples_make_a_label_stale_and_a_rename_does_not(index: LabelIndex) -> None:
    pin = index.get("pin")
    index.upsert(replace(pin, name="PIN code", examples=tuple(EXAMPLES["pin"])))
    assert status(index) == (6, 0, 0, 0)
    index.add_examples("pin", ["pin for contactless payments"])
    assert status(index) == (5, 0, 1, 0)
    assert top(index, ["how do I change my pin"]) == ["pin"]  # scored by its similarity
    reopened = LabelIndex(chroma_client(index._client.get_settings().persist_directory),
                          index.embedder)
    assert status(reopened) == (5, 0, 1, 0)


def test_a_deleted_labels_row_goes(index: LabelIndex, tmp_path: Path) -> None:
    index.delete(["pin"])
    assert status(index) == (5, 0, 0, 0)
    assert not index._records.get(ids=["pin"])["ids"]
    index.upsert(Label(id="pin", name="pin", examples=tuple(EXAMPLES["pin"])))
    assert status(index) == (5, 1, 0, 0)  # the same examples, but no weight any more
    assert status(LabelIndex(chroma_client(tmp_path / "db"), index.embedder)) == (5, 1, 0, 0)


def test_the_head_survives_a_reopen_and_a_compaction(index: LabelIndex, tmp_path: Path) -> None:
    head = index.head()
    assert head is not None
    before = (head.row_of, head.weights.copy(), head.biases.copy(), head.info)
    index.upsert(Label(id="crypto", name="crypto", examples=("buy bitcoin",)))
    index.delete(["crypto"])  # dead slots for the compaction to drop

    def same(other: LabelIndex) -> None:
        found = other.head()
        assert found is not None and (found.row_of, found.info) == (before[0], before[3])
        np.testing.assert_array_equal(found.weights, before[1])
        np.testing.assert_array_equal(found.biases, before[2])

    same(LabelIndex(chroma_client(tmp_path / "db"), index.embedder))
    assert index.compact() > 0
    same(index)
    same(LabelIndex(chroma_client(tmp_path / "db"), index.embedder))


def test_training_again_is_skipped_when_nothing_changed(index: LabelIndex,
                                                        tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert train_head(settings, index).startswith("head: up to date")
    index.add_examples("pin", ["pin for contactless payments"])
    assert train_head(settings, index).startswith("head: trained")
    assert status(index) == (6, 0, 0, 0)
    assert train_head(settings.model_copy(update={"head_train": False}), index).startswith(
        "head: not trained")


def test_a_catalog_without_examples_builds_no_head(tmp_path: Path, embedder: Embedder) -> None:
    catalog = load_catalog(MINI_CATALOG)
    bare = Catalog({lid: replace(lab, examples=()) for lid, lab in catalog.labels.items()})
    index = LabelIndex(chroma_client(tmp_path / "db"), embedder)
    index.sync(bare)
    assert train_head(make_settings(tmp_path), index).startswith("head: none")
    assert index.head() is None
    texts = ["my kitten bites", "when is the tax return due"]
    with_stage = Retriever(index, RRF, stages=[HeadStage(0.5)]).candidates(texts, 5)
    assert with_stage == Retriever(index, RRF).candidates(texts, 5)
    head = open_engine(make_settings(tmp_path), index).describe()["head"]
    assert head == {"on": False, "trained": False}


def test_training_is_deterministic_and_both_modes_learn_multi_label_sets() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16))
    vectors, label_sets = [], []
    for n in range(200):  # labels 0-3, and texts of both 0 and 1 between their centres
        labels = [0, 1] if n % 5 == 0 else [n % 4]
        point = centres[labels].mean(axis=0) + 0.3 * rng.normal(size=16)
        vectors.append(point / np.linalg.norm(point))
        label_sets.append(labels)
    x = np.array(vectors, dtype=np.float32)
    config = TrainConfig("ovr", epochs=5, max_seconds=60.0, hard_negatives=2, random_negatives=1)
    first, again = fit_head(x, label_sets, 4, config), fit_head(x, label_sets, 4, config)
    np.testing.assert_array_equal(first.weights, again.weights)
    for mode in ("ovr", "softmax"):
        fitted = fit_head(x, label_sets, 4, replace(config, mode=mode))
        logits = x @ fitted.weights.T + fitted.biases
        single = [n for n, labels in enumerate(label_sets) if len(labels) == 1]
        right = np.mean(logits[single].argmax(axis=1) == [label_sets[n][0] for n in single])
        assert right > 0.9, mode
        both = [n for n, labels in enumerate(label_sets) if len(labels) == 2]
        assert np.mean(np.isin(np.argsort(-logits[both], axis=1)[:, :2], [0, 1])) > 0.9, mode


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize(("mode", "l2"), [("ovr", 0.0), ("ovr", 0.01), ("softmax", 0.01)])
def test_the_written_out_gradients_are_autograds(mode: str, l2: float, dense: bool) -> None:
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(6, 8, generator=generator)
    w, b = torch.randn(5, 8, generator=generator), torch.randn(5, generator=generator)
    # Row 0 has two positives (one padded slot in row 1), rows share candidates.
    where = torch.tensor([[0, 1, 2, 3], [1, 0, 4, 2], [2, 3, 0, 4], [3, 4, 1, 0],
                          [4, 2, 3, 1], [0, 4, 2, 1]])
    target = torch.zeros(6, 4, dtype=torch.bool)
    target[:, 0] = True
    target[0, 1] = True
    valid = torch.ones(6, 4, dtype=torch.bool)
    valid[1, 1] = False
    config = TrainConfig(mode, epochs=1, max_seconds=1.0, hard_negatives=2,  # type: ignore[arg-type]
                         random_negatives=1, l2=l2)
    wl, bl = w.clone().requires_grad_(), b.clone().requires_grad_()
    logits = torch.einsum("nd,nkd->nk", x, wl[where]) + bl[where]
    if mode == "ovr":
        pairs = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target.float(), reduction="none")
        loss = (pairs * valid).sum() / valid.sum()
    else:
        share = target.float() / target.sum(dim=1, keepdim=True)
        logp = torch.log_softmax(logits.masked_fill(~valid, float("-inf")), dim=1)
        loss = -(share * logp.masked_fill(~valid, 0.0)).sum(1).mean()
    loss = loss + l2 * (wl[where] ** 2).sum() / len(x)
    loss.backward()
    grad_w, grad_b = batch_gradients(x, w, b, where, target, valid, config, dense)
    torch.testing.assert_close(grad_w, wl.grad)
    torch.testing.assert_close(grad_b, bl.grad)


def test_a_small_catalog_trains_for_more_passes_until_it_has_made_min_steps() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    label_sets = [[n % 5] for n in range(600)]
    config = TrainConfig("ovr", epochs=2, max_seconds=60.0, hard_negatives=2,
                         random_negatives=1, min_steps=9, batch_size=256)
    assert fit_head(x, label_sets, 5, config).epochs == 5  # 2 batches a pass: 5 passes
    assert fit_head(x, label_sets, 5, replace(config, min_steps=0)).epochs == 2


def test_the_budget_counts_work_so_a_slower_machine_trains_the_same_head(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2_560, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    label_sets = [[n % 50] for n in range(2_560)]
    step = head_train.STEP_S + 50 * (head_train.TOUCHED_ROW_S + head_train.LABEL_S)
    before = 50 ** 2 * head_train.PROTOTYPE_PAIR_S + len(x) * head_train.EXAMPLE_S
    # 10 steps a pass: the budget ends the first pass after its 4th step
    config = TrainConfig("ovr", epochs=3, max_seconds=before + 3.5 * step, hard_negatives=2,
                         random_negatives=1)
    here = fit_head(x, label_sets, 50, config)
    assert here.epochs == 1
    assert before + 4 * (step - 50 * head_train.TOUCHED_ROW_S) < here.work_s <= (
        before + 4 * step + 1e-9)
    gradients = head_train.batch_gradients

    def slow(*args: object, **kwargs: object) -> object:
        time.sleep(0.05)  # a machine far slower than the budget's reference one
        return gradients(*args, **kwargs)

    monkeypatch.setattr(head_train, "batch_gradients", slow)
    slower = fit_head(x, label_sets, 50, config)
    assert slower.seconds > here.seconds + 0.15
    np.testing.assert_array_equal(slower.weights, here.weights)
    np.testing.assert_array_equal(slower.biases, here.biases)
    monkeypatch.setattr(work_meter, "WALL_FACTOR", 0.0)  # past it, the clock stops training
    stopped = fit_head(x, label_sets, 50, config)
    assert stopped.epochs == 0 and stopped.work_s == pytest.approx(before)


def test_hard_negatives_are_the_nearest_other_prototypes_as_brute_force_finds_them() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    label_sets = [[n % 7] if n % 3 else [n % 7, (n + 2) % 7] for n in range(120)]
    positives = _padded(label_sets)
    prototypes = _prototypes(x, positives, 7)
    # 7 labels: every label's neighbour pool holds all the others, so the two-step search
    # must find exactly what one pass over every prototype finds.
    config = TrainConfig("ovr", epochs=1, max_seconds=60.0, hard_negatives=3,
                         random_negatives=0)
    found = _hard_negatives(x, positives, prototypes, config)
    for vector, labels, row in zip(x, label_sets, found, strict=True):
        others = [label for label in np.argsort(-(prototypes @ vector), kind="stable")
                  if label not in labels]
        assert row.tolist() == others[:3]


def test_info_says_the_head_is_on(tmp_path: Path) -> None:
    env: dict[str, str | None] = {k: None for k in os.environ
                                  if k.startswith(("LABELRANK_", "OPENAI_"))}
    env["LABELRANK_SELF_CALIBRATION_TEXTS"] = "0"
    db = str(tmp_path / "db")
    done = CliRunner().invoke(app, ["index", str(MINI_CATALOG), "--db", db], env=env)
    assert done.exit_code == 0, done.stderr
    assert "head: trained on 18 examples of 6 labels" in done.stderr
    shown = CliRunner().invoke(app, ["info", "--db", db], env=env)
    head = json.loads(shown.stdout)["head"]
    assert head["on"] and head["trained_labels"] == 6 and head["embedder"] == "all-MiniLM-L6-v2"
    assert head["untrained"] == {"new": 0, "stale": 0, "no_examples": 0}


def test_a_chroma_server_keeps_the_head(chroma_server: tuple[str, int],
                                        embedder: Embedder) -> None:
    host, port = chroma_server
    index = LabelIndex(chroma_client(host=host, port=port), embedder)
    index.sync(banking())
    assert train_head(make_settings(Path("unused"), chroma_host=host, chroma_port=port),
                      index).startswith("head: trained")
    reopened = LabelIndex(chroma_client(host=host, port=port), embedder)
    assert status(reopened) == (6, 0, 0, 0)
    assert top(reopened, ["atm said no"]) == top(index, ["atm said no"])


def test_self_calibration_weighs_a_head_that_never_saw_its_held_out_texts(
        tmp_path: Path, index: LabelIndex) -> None:
    settings = make_settings(tmp_path)
    held = ("refund", "example", EXAMPLES["refund"][0])
    view = HeldOutIndex(index, [held], train_head=partial(head_without, settings, index))
    full, without = index.head(), view.head()
    assert full is not None and without is not None
    assert without.info.examples == full.info.examples - 1
    assert not np.allclose(without.weights[without.row_of["refund"]],
                           full.weights[full.row_of["refund"]])
    found = self_calibrate(settings, index)
    assert found.best is not None
    weights = {c.stage_settings["head_weight"] for c in found.results if c.stage(HeadStage)}
    assert weights == {0.25, 0.5, 0.75, 1.0}  # every weight the stage offers was tried


def test_a_spent_budget_still_weighs_the_head(tmp_path: Path, index: LabelIndex) -> None:
    # The bounded self-calibration's grid can spend the whole budget (NLU++: 30 s); the head
    # is judged anyway, and only the costlier kinds are named as left untried.
    found = self_calibrate(make_settings(tmp_path), index, budget_s=0.0)
    weights = {c.stage_settings["head_weight"] for c in found.results if c.stage(HeadStage)}
    assert weights == {0.25, 0.5, 0.75, 1.0}
    skipped = found.record["dev_set"]["work"]["budget_skipped"]
    assert skipped and "head_weight" not in skipped


def test_a_catalog_too_small_to_calibrate_keeps_its_head_on(tmp_path: Path,
                                                            index: LabelIndex) -> None:
    record = shape_record(index)
    assert record["settings"]["head_weight"] > 0
    index.save_calibration(record)
    assert "+head(" in build_pipeline(make_settings(tmp_path), index).retriever.describe()
