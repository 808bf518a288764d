"""`labelrank fit` on a catalog with few or no examples (issue 24): tuned on the catalog's own
texts, chosen on pseudo-queries of labels held out of tuning; the budget counts from the start;
a dev set without out-of-scope texts gets its own."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from retrieval.catalog import Label, load_catalog
from retrieval.embedder import DEFAULT_MODEL
from retrieval.index import label_texts
from retrieval.tune.catalog_pairs import catalog_pairs
from retrieval.tune.train import TuneConfig, training_rows
from service.engine import open_engine
from service.factory import build_index
from service.jobs.fit import WORK_DIR, FitConfig, FitReport, fit
from service.jobs.fit_dev import LabeledDev, PseudoDev
from service.jobs.indexing import index_catalog
from service.pipeline import ClassifyOptions
from tests.conftest import make_settings

# Things x intents: an intent is said in phrases that name neither the intent nor each other,
# the same for every thing. Tuning on some labels' aliases teaches the phrases, which carries
# over to the labels held out of it (measured: pseudo-query f1 0.42 -> 0.74 after 10 steps).
THINGS = ["bicycle", "laptop", "phone", "car", "washing machine", "camera", "printer", "boat",
          "guitar", "television", "drone", "scooter", "piano", "tractor", "microwave",
          "projector", "tent", "kayak", "lawn mower", "sewing machine", "motorbike", "tablet",
          "fridge", "caravan", "violin", "telescope", "dishwasher", "snowboard", "van", "oven"]
INTENTS = {"repair": ["{t} makes a strange noise", "my {t} won't turn on",
                      "{t} broke down again"],
           "purchase": ["looking for a cheap {t}", "which {t} model should I get",
                        "best {t} deals"],
           "rental": ["need a {t} for the weekend only", "short-term {t} hire",
                      "borrow a {t} for a trip"]}
WINS = FitConfig(minutes=15, max_pairs=160, learning_rate=1e-4, batch_size=16)
LOSES = FitConfig(minutes=15, max_pairs=32, learning_rate=1.0, batch_size=16)


def label_id(thing: str, intent: str) -> str:
    return f"{thing.replace(' ', '_')}.{intent}"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 labels with a name and three aliases each, no description, no example."""
    path = tmp_path_factory.mktemp("synthetic") / "catalog.jsonl"
    path.write_text("".join(
        json.dumps({"id": label_id(t, i), "name": f"{t.capitalize()} {i}",
                    "aliases": [a.format(t=t) for a in aliases]}) + "\n"
        for t in THINGS for i, aliases in INTENTS.items()))
    return path


@pytest.fixture(scope="module")
def won(tmp_path_factory: pytest.TempPathFactory, catalog: Path) -> tuple[Path, FitReport]:
    db = tmp_path_factory.mktemp("fit-catalog-wins") / "db"
    settings = make_settings(db.parent, db=db, embed_threads=1)
    # As a new user would: `labelrank index` first, then fit into the same directory (whose
    # base-model index must give way to the tuned one).
    index_catalog(settings, load_catalog(catalog))
    return db, fit(settings, catalog, [], None, WINS)


def test_a_catalog_without_examples_is_tuned_on_its_own_texts(
        won: tuple[Path, FitReport]) -> None:
    db, report = won
    assert report.train_texts == 0
    assert report.dev["name"] == "fit pseudo-queries" and report.dev["n"] >= 20
    assert report.dev["labels_held_out_of_tuning"] == 18  # a fifth of the 90 labels
    assert set(report.pairs) == {"alias", "composed"}  # no description, no example
    assert report.model == "tuned", report.why
    assert report.tuned and report.tuned["value"] > report.base["value"] + 0.05
    engine = open_engine(make_settings(db.parent, db=db))
    assert engine.index.embedder.name == str(db / WORK_DIR / "model")
    assert engine.index.calibration()["source"] == "self"
    result = engine.pipeline.classify("my kayak won't turn on", ClassifyOptions(mode="retrieval"))
    assert result.candidates[0].id == "kayak.repair"


def test_held_out_labels_are_never_trained_on(won: tuple[Path, FitReport],
                                              catalog: Path) -> None:
    db, _ = won
    index = build_index(make_settings(db.parent, db=db / WORK_DIR / "base-db"))
    held = frozenset(sorted(index.labels)[::5])
    rows = training_rows(index, {}, TuneConfig(), sorted(index.labels), held)
    held_texts = {text for lid in held for _, text in label_texts(index.labels[lid])}
    assert rows and all(r.owners.isdisjoint(held) and r.negative_label not in held
                        for r in rows)
    assert not held_texts & {t for r in rows for t in (r.anchor, r.positive, r.negative)}
    assert {r.kind for r in rows} == {"alias", "composed"}
    # Where some labels have examples, both kinds of pairs train together; a held-out
    # label's examples do not.
    trained = next(lid for lid in sorted(index.labels) if lid not in held)
    examples = {trained: ["the hull has a crack in it", "it leaks"],
                sorted(held)[0]: ["a text of a held-out label"]}
    rows = training_rows(index, examples, TuneConfig(), sorted(index.labels), held)
    assert {r.kind for r in rows} == {"alias", "composed", "label", "text"}
    assert "a text of a held-out label" not in {r.anchor for r in rows}


def test_the_base_model_is_kept_when_tuning_loses(tmp_path: Path, catalog: Path) -> None:
    # A few labels have examples: too few for a dev split, so the dev set is pseudo-queries.
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(
        json.dumps({"text": f"{phrase} {t}", "labels": [label_id(t, "repair")]}) + "\n"
        for t in THINGS[:4] for phrase in ("please fix the", "repair shop for my")))
    db = tmp_path / "db"
    report = fit(make_settings(tmp_path, db=db, embed_threads=1), catalog, [examples], None,
                 LOSES)
    assert report.train_texts == 8 and report.dev["name"] == "fit pseudo-queries"
    assert report.model == "base" and "does not win" in report.why
    assert report.tuned is not None and report.tuned["value"] < report.base["value"]
    assert "alias" in report.pairs
    assert open_engine(make_settings(tmp_path, db=db)).index.embedder.name == DEFAULT_MODEL


def test_the_budget_counts_from_the_start_and_leaves_room_for_what_follows(
        tmp_path: Path, catalog: Path) -> None:
    # Six seconds cannot hold indexing, calibration and the estimate of re-embedding: fit
    # tunes nothing, says why, and keeps the base model.
    report = fit(make_settings(tmp_path, db=tmp_path / "db", embed_threads=1), catalog, [],
                 None, replace(WINS, minutes=0.1))
    assert report.model == "base" and report.why.startswith("not tuned")
    assert report.tuned is None and "tune: training" not in report.seconds
    assert report.budget["tune_s"] == 0 and report.budget["after_tuning_estimate_s"] > 0
    stages = [s for s in report.seconds if s != "total"]
    assert {"index (base)", "calibrate (base)", "index (final)"} <= set(stages)
    assert report.seconds["total"] >= sum(report.seconds[s] for s in stages
                                          if not s.startswith("tune:")) - 1


def test_a_dev_set_without_out_of_scope_texts_gets_its_own() -> None:
    rows = [(f"text {i}", (f"label{i % 10}",)) for i in range(100)]
    dev = LabeledDev.of(rows, None, "dev")
    gone = set(dev.out_of_scope)
    assert 1 <= len(gone) <= 3  # at most a third of the labels
    out = sum(set(labels) <= gone for _, labels in rows)
    assert out >= 15 and dev.share() == out / 100
    assert dev.describe()["labels_taken_out_of_scope"] == len(gone)
    with_own = [*rows, ("off topic", ())]
    assert LabeledDev.of(with_own, 0.3, "dev").out_of_scope == ()  # real ones: kept as they are


def test_fit_pseudo_queries_compose_the_stated_multi_label_share(catalog: Path) -> None:
    loaded = load_catalog(catalog)
    built_in = PseudoDev.of(loaded, 0.2, 40, None).pseudo.composition
    single = PseudoDev.of(loaded, 0.2, 40, None, multi_share=0.0).pseudo.composition
    assert built_in.get("composed", 0) >= 10 and "composed" not in single, (built_in, single)


def test_its_own_out_of_scope_texts_keep_the_none_threshold(won: tuple[Path, FitReport]
                                                            ) -> None:
    db, _ = won
    settings = make_settings(db.parent, db=db / WORK_DIR / "base-db")
    index = build_index(settings)
    phrases = {"repair": "please fix my {t}", "purchase": "I want to buy a {t}",
               "rental": "can I rent a {t}"}
    rows = [(p.format(t=t), (label_id(t, i),)) for t in THINGS for i, p in phrases.items()]
    without = LabeledDev(rows, None, "dev").calibrate(settings, index, 0.0)
    own = LabeledDev.of(rows, None, "dev")
    assert own.out_of_scope
    with_own = own.calibrate(settings, index, 0.0)
    # Without out-of-scope texts any threshold under the in-scope texts' scores is as good:
    # the search keeps the lowest; with them it must rise above theirs.
    assert with_own.threshold.min_similarity > without.threshold.min_similarity


def test_a_catalog_of_names_alone_still_makes_composed_pairs() -> None:
    labels = {f"l{i}": Label(f"l{i}", f"name {i}") for i in range(8)}
    pairs, gold = catalog_pairs(labels, sorted(labels), random.Random(0))
    assert pairs and {p.kind for p in pairs} == {"composed"}
    assert all(p.label_id in gold[p.anchor] and p.positive == labels[p.label_id].name
               for p in pairs)
    assert all(2 <= len(gold[p.anchor]) <= 3 for p in pairs)
    assert catalog_pairs({"l0": labels["l0"]}, ["l0"], random.Random(0)) == ([], {})
