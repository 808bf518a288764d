"""Self-calibration: pseudo-queries from the catalog, held out of a real index, searched over
every lever; what it saves and how `info` says where each setting came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.calibration.held_out import HeldOutIndex
from retrieval.calibration.memo_index import MemoIndex
from retrieval.calibration.pseudo_queries import (
    COMPOSED_SHARE,
    PseudoSet,
    add_copies,
    build_pseudo_set,
)
from retrieval.calibration.search import search_settings
from retrieval.calibration.shape import shape_default
from retrieval.catalog import Catalog, Label, load_catalog
from retrieval.fusion import Aggregation
from retrieval.index import LabelIndex, chroma_client, label_texts, vector_id
from retrieval.lexical import Lexicon
from retrieval.retriever import Retriever
from retrieval.subqueries import SubqueryConfig, SubqueryStage
from service.factory import build_pipeline, search_space, setting_sources
from service.jobs.self_calibration import self_calibrate
from service.settings import Settings
from tests.conftest import DATA, make_settings

SKILLS = DATA / "skills_catalog.jsonl"
# Job-ad-like texts naming one or two skills of the names-and-aliases catalog above; broad
# labels there have six aliases, so reciprocal rank over several hits favours them.
ADS = [("you will bake sourdough bread and decorate wedding cakes", ["baking", "pastry"]),
       ("experience grilling steaks on a barbecue", ["grilling"]),
       ("writing python scripts and sql queries for reports", ["python", "sql"]),
       ("drive a forklift in the warehouse and deliver goods in a heavy truck",
        ["forklift", "truck"]),
       ("tutor pupils in algebra and teach spanish to adults",
        ["maths-teaching", "language-teaching"]),
       ("dress wounds after surgery and give residents their medicines",
        ["wound-care", "medication"]),
       ("run the monthly payroll and prepare tax returns for clients", ["payroll", "tax"]),
       ("prune apple trees in winter and mow the lawns of the park", ["pruning", "lawn"]),
       ("repair punctures on customers' bicycles", ["cycling"]),
       ("fix leaking pipes and install new sockets", ["plumbing", "electrical"]),
       ("weld steel frames and build wooden stairs", ["welding", "carpentry"]),
       ("build interactive web pages in javascript", ["javascript"])]


@pytest.fixture(scope="module")
def skills(tmp_path_factory: pytest.TempPathFactory, embedder) -> LabelIndex:
    """The names-and-aliases catalog (no examples) in a real Chroma index."""
    db = tmp_path_factory.mktemp("skills") / "db"
    index = LabelIndex(chroma_client(db), embedder)
    index.sync(load_catalog(SKILLS))
    return index


def r_precision(index: LabelIndex, values: dict) -> float:
    """Mean share of each ad's gold labels among its top len(gold) candidates."""
    pipeline = build_pipeline(make_settings(Path("/nonexistent"), top_k=5, **values), index)
    shortlists = pipeline.retriever.candidates([text for text, _ in ADS], 5)
    return float(np.mean([len({c.label_id for c in s[:len(g)]} & set(g)) / len(g)
                          for s, (_, g) in zip(shortlists, ADS, strict=True)]))


def test_a_catalog_of_names_and_aliases_calibrates_itself_at_least_to_max_similarity(
        tmp_path: Path, skills: LabelIndex) -> None:
    found = self_calibrate(make_settings(tmp_path, top_k=5, self_calibration_texts=100), skills)
    assert found.best is not None and found.record["source"] == "self"
    composition = found.record["dev_set"]["composition"]
    assert composition["composed"] >= 10 and composition["alias"] >= 10
    assert set(found.record["sources"].values()) == {"self"}
    chosen = r_precision(skills, found.record["settings"])
    assert chosen >= r_precision(skills, {"aggregation": "max"})
    # the catalog is shaped so that the shipped default before self-calibration loses here
    assert chosen > r_precision(skills, {"aggregation": "rrf", "rrf_k": 1.0,
                                         "max_hits_per_label": 3})


def test_held_out_texts_are_never_found_and_name_nothing(readonly_index: LabelIndex) -> None:
    own = vector_id("pets.dogs", "alias", "puppies")
    query = readonly_index.embedder.embed(["puppies"])
    assert readonly_index.search(query, 5, with_texts=False)[0][0].vector_id == own
    view = HeldOutIndex(readonly_index, [("pets.dogs", "alias", "puppies")])
    hits = view.search(query, 5, with_texts=False)[0]
    assert own not in {h.vector_id for h in hits} and len(hits) == 5
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    ids, distances = view.nearest_ids(query, 5)
    assert own not in ids[0] and len(ids[0]) == len(distances[0]) == 5
    assert "pets.dogs" in Lexicon(readonly_index.labels).matches("puppies")
    assert "pets.dogs" not in Lexicon(view.labels).matches("puppies")
    # a label taken out whole is no answer: its texts become out-of-scope queries
    gone = HeldOutIndex(readonly_index, [], out_of_scope=["pets.cats"])
    shortlist = Retriever(gone, Aggregation(), 30, evidence=False).candidates(
        ["my cat scratches the furniture"], 5)[0]
    assert shortlist and "pets.cats" not in {c.label_id for c in shortlist}


def test_pseudo_set_is_bounded_and_every_label_keeps_a_text() -> None:
    catalog = load_catalog(SKILLS)
    pseudo = build_pseudo_set(catalog.labels, lambda label_id: [], 25)
    assert len(pseudo.texts) == 25 and "composed" in pseudo.composition
    held: dict[str, int] = {}
    for text in pseudo.all_held_out():
        held[text[0]] = held.get(text[0], 0) + 1
    assert all(held[lid] < len(label_texts(catalog.labels[lid])) for lid in held)
    for text, gold, kind in zip(pseudo.texts, pseudo.gold, pseudo.kinds, strict=True):
        if kind == "composed":
            assert 2 <= len(gold) <= 3
        else:
            assert len(gold) == (0 if kind == "none" else 1)
        assert text
    # out-of-scope texts come from labels no other pseudo-query touched
    assert pseudo.composition["none"] == len(pseudo.out_of_scope) >= 3
    assert not set(pseudo.out_of_scope) & {text[0] for text, kind in zip(
        pseudo.held_out, pseudo.kinds, strict=True) if kind != "none" for text in text}
    again = build_pseudo_set(catalog.labels, lambda label_id: [], 25)
    assert again.texts == pseudo.texts  # seeded: the same catalog gives the same dev set


@pytest.mark.parametrize("share", [0.0, 0.25])  # (30 labels run out of texts past it)
def test_the_composed_share_is_the_one_asked_for(share: float) -> None:
    catalog = load_catalog(SKILLS)
    pseudo = build_pseudo_set(catalog.labels, lambda label_id: [], 40, composed_share=share)
    composed = pseudo.composition.get("composed", 0)
    assert len(pseudo.texts) == 40 and abs(composed - share * 40) <= 1, pseudo.composition
    assert Settings(_env_file=None).self_calibration_multi_share == COMPOSED_SHARE


def test_a_text_stored_under_two_labels_is_gold_for_both(tmp_path: Path, embedder) -> None:
    shared = "my card was charged twice for one coffee"
    index = LabelIndex(chroma_client(tmp_path / "db"), embedder)
    index.sync(Catalog({
        "a": Label("a", "Duplicate charge", examples=(shared, "charged two times")),
        "b": Label("b", "Card payment", examples=(shared, "paying by card"))}))
    pseudo = PseudoSet()
    pseudo.add(shared, ["a"], [("a", "example", shared)], "example")
    add_copies(pseudo, index)
    assert pseudo.gold == [["a", "b"]]
    assert ("b", "example", shared) in pseudo.held_out[0]


def test_memo_view_ranks_exactly_what_the_index_ranks(readonly_index: LabelIndex) -> None:
    texts = ["sourdough, espresso, tax return", "my puppy chews shoes"]
    stages = [SubqueryStage(SubqueryConfig(2, 40, 0.5, 10))]
    direct = Retriever(readonly_index, Aggregation("max", 0, None), 30, evidence=False)
    memo = MemoIndex(readonly_index)
    viewed = Retriever(memo, Aggregation("max", 0, None), 30, evidence=False)
    expected = direct.rank(direct.search(texts, 5), stages=stages)
    search = viewed.search(texts, 5)
    assert viewed.rank(search, stages=stages) == expected
    charged = memo.charged
    assert viewed.rank(search, stages=stages) == expected  # now all from memory
    assert memo.charged > charged  # and still charged what it cost the first time


def test_speed_floor_keeps_slow_settings_out(readonly_index: LabelIndex) -> None:
    texts = ["sourdough, espresso, tax return", "my puppy chews shoes", "when are taxes due"]
    gold = [["food.baking", "food.coffee", "money.taxes"], ["pets.dogs"], ["money.taxes"]]
    space = search_space(Settings(_env_file=None),
                         aggregations=(Aggregation("max", 0, None), Aggregation()),
                         depths=(30,), levers={"branches": ()})
    best, results = search_settings(readonly_index, texts, gold, 5, "f1_samples", space,
                                    min_texts_per_s=1e9)
    assert any(r.stage(SubqueryStage) for r in results)  # tried and reported
    whole = [r for r in results if not r.stages]
    # nothing is that fast: the fastest whole-text setting, never a sub-query one
    assert best.stage(SubqueryStage) is None and best in whole
    assert best.texts_per_s == max(r.texts_per_s for r in whole)


def test_shape_default_follows_the_share_of_examples() -> None:
    assert shape_default([0] * 7 + [50] * 3)["aggregation"] == "max"
    assert shape_default([1, 2, 2, 1])["aggregation"] == "max"
    assert shape_default([0] * 3 + [100] * 7) == {"aggregation": "rrf", "rrf_k": 1.0,
                                                  "max_hits_per_label": 3}


def test_saved_levers_serve_unless_set_explicitly(tmp_path: Path,
                                                  mini_index: LabelIndex) -> None:
    saved = {"subqueries": 3, "subquery_neighbours": 7, "lexical_weight": 0.2,
             "neighbours": 50, "threshold": 0.3}
    mini_index.save_calibration({"settings": saved, "source": "self",
                                 "sources": dict.fromkeys(saved, "self")})
    retriever = build_pipeline(make_settings(tmp_path), mini_index).retriever
    assert retriever.describe() == "subqueries(n<=3,w=0.5,words<=40,nn=7)+lexical(0.2)"
    assert retriever.neighbours == 50
    explicit = make_settings(tmp_path, lexical_weight=0.0)
    assert "lexical" not in build_pipeline(explicit, mini_index).retriever.describe()
    sources = setting_sources(explicit, mini_index)
    assert (sources["lexical_weight"], sources["subqueries"], sources["max_labels"]) == (
        "explicit", "self", "default")


def test_subqueries_are_judged_on_the_texts_named(readonly_index: LabelIndex) -> None:
    texts = ["sourdough, espresso, tax return", "dogs", "my puppy chews shoes and the sofa",
             "cats"]
    gold = [["food.baking", "food.coffee", "money.taxes"], ["pets.dogs"], ["pets.dogs"],
            ["pets.cats"]]
    space = search_space(Settings(_env_file=None), aggregations=(Aggregation("max", 0, None),),
                         depths=(30,), levers={"lexical_weight": (), "branches": ()})
    best, results = search_settings(readonly_index, texts, gold, 5, "f1_samples", space,
                                    sampled_texts=[0, 2])
    judged = [r for r in results if r.stage(SubqueryStage) and r is not best]
    assert judged and all(r.n == 2 for r in judged)
    # against the best whole-text setting on the same two texts
    assert [r.n for r in results if not r.stage(SubqueryStage)] == [4, 2]
    assert best.n == 4  # a sub-query winner is ranked on every text again for its threshold
