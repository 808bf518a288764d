"""Hand-computed checks for eval.metrics."""

import itertools
import math
import random

import pytest

from eval.metrics import evaluate, is_single_label, per_label, recall_curve

COUNT_KEYS = {"n", "n_none", "n_pred_none"}

# Text 0: two gold labels, duplicate prediction. Text 1: prediction empty, ranked list of 2.
# Text 2: out-of-scope (empty gold) but something predicted.
GOLD = [["a", "b"], ["c"], []]
PREDICTED = [["a", "a", "x"], [], ["a"]]
RANKED = [["a", "x", "b", "y"], ["x", "y"], ["a"]]


def test_counts_and_ranking_metrics() -> None:
    m = evaluate(GOLD, PREDICTED, RANKED)
    assert m["n"] == 3
    assert m["n_none"] == 1
    # K defaults to the longest ranked list (4); text 0 finds 2/2, text 1 finds 0/1.
    assert m["candidate_recall@4"] == pytest.approx(0.5)
    assert m["R@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["RP@1"] == pytest.approx((1 / 1 + 0) / 2)
    assert m["P@1"] == pytest.approx((1 / 1 + 0) / 2)
    # Both ranked lists are shorter than 5 and 10: R/RP use what is there, P still divides by k.
    assert m["R@5"] == pytest.approx((2 / 2 + 0) / 2)
    assert m["RP@5"] == pytest.approx((2 / 2 + 0) / 2)
    assert m["P@5"] == pytest.approx((2 / 5 + 0) / 2)
    assert m["R@10"] == pytest.approx(0.5)
    assert m["RP@10"] == pytest.approx(0.5)
    assert m["P@10"] == pytest.approx((2 / 10 + 0) / 2)


def test_rank_precision_uses_min_of_k_and_gold_size() -> None:
    gold = [["a", "b", "c"]]
    ranked = [["a", "b", "x", "c"]]
    m = evaluate(gold, [[]], ranked, ks=(2, 4))
    assert m["RP@2"] == pytest.approx(2 / 2)
    assert m["R@2"] == pytest.approx(2 / 3)
    assert m["P@2"] == pytest.approx(2 / 2)
    assert m["RP@4"] == pytest.approx(3 / 3)
    assert m["P@4"] == pytest.approx(3 / 4)


def test_candidate_k_override_and_duplicate_ranked_ids() -> None:
    gold = [["a", "b"]]
    ranked = [["a", "a", "b"]]
    m = evaluate(gold, [["a"]], ranked, ks=(2,), candidate_k=2)
    # The repeated "a" must not count as a second hit.
    assert m["candidate_recall@2"] == pytest.approx(0.5)
    assert m["R@2"] == pytest.approx(0.5)
    assert "candidate_recall@3" not in m


def test_selection_metrics_on_mixed_fixture() -> None:
    m = evaluate(GOLD, PREDICTED, RANKED)
    # tp = {a}, fp = {x (text 0), a (text 2)}, fn = {b, c}.
    assert m["precision_micro"] == pytest.approx(1 / 3)
    assert m["recall_micro"] == pytest.approx(1 / 3)
    assert m["f1_micro"] == pytest.approx(1 / 3)
    # Labels a, b, c, x: P = (1/2, 0, 0, 0), R = (1, 0, 0, 0), F1 = (2/3, 0, 0, 0).
    assert m["precision_macro"] == pytest.approx(0.5 / 4)
    assert m["recall_macro"] == pytest.approx(1 / 4)
    assert m["f1_macro"] == pytest.approx((2 / 3) / 4)
    # Text 0 scores 1/2 each (Jaccard 1/3); texts 1 and 2 have exactly one side empty -> 0.
    assert m["precision_samples"] == pytest.approx(0.5 / 3)
    assert m["recall_samples"] == pytest.approx(0.5 / 3)
    assert m["f1_samples"] == pytest.approx(0.5 / 3)
    assert m["jaccard"] == pytest.approx((1 / 3) / 3)
    assert m["exact_match"] == pytest.approx(0.0)
    assert m["n_pred_none"] == 1
    assert m["none_precision"] == pytest.approx(0.0)
    assert m["none_recall"] == pytest.approx(0.0)
    assert "accuracy" not in m


def test_per_label() -> None:
    stats = per_label(GOLD, PREDICTED)
    assert sorted(stats) == ["a", "b", "c", "x"]
    assert stats["a"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1.0}
    )
    assert stats["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1.0}
    assert stats["x"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0.0}


def test_micro_and_macro_differ_in_multi_label_case() -> None:
    gold = [["a", "b"], ["a"], ["a", "c"]]
    predicted = [["a"], ["a"], ["a", "b"]]
    m = evaluate(gold, predicted, gold)
    # tp = 3 (all "a"), fp = 1 ("b" in text 2), fn = 2 ("b" in text 0, "c" in text 2).
    assert m["precision_micro"] == pytest.approx(3 / 4)
    assert m["recall_micro"] == pytest.approx(3 / 5)
    assert m["f1_micro"] == pytest.approx(2 / 3)
    # a scores 1/1/1, b and c score 0 everywhere.
    assert m["precision_macro"] == pytest.approx(1 / 3)
    assert m["recall_macro"] == pytest.approx(1 / 3)
    assert m["f1_macro"] == pytest.approx(1 / 3)
    assert m["precision_samples"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["recall_samples"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["f1_samples"] == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert m["jaccard"] == pytest.approx((0.5 + 1 + 1 / 3) / 3)
    assert m["exact_match"] == pytest.approx(1 / 3)
    # Nothing is out of scope and nothing is predicted empty, so the none block is absent.
    assert not {"n_pred_none", "none_precision", "none_recall"} & m.keys()


def test_duplicate_predictions_are_deduplicated() -> None:
    m = evaluate([["a", "b"]], [["b", "b", "a", "a"]], [["a", "b"]])
    assert m["precision_micro"] == pytest.approx(1.0)
    assert m["precision_macro"] == pytest.approx(1.0)
    assert m["precision_samples"] == pytest.approx(1.0)
    assert m["exact_match"] == pytest.approx(1.0)
    assert per_label([["a"]], [["a", "a"]])["a"]["precision"] == pytest.approx(1.0)


def test_empty_gold_and_prediction_conventions() -> None:
    gold = [[], [], ["a"], ["b"]]
    predicted = [[], ["a"], [], ["b"]]
    m = evaluate(gold, predicted, [["a"], ["a"], ["a"], ["b"]])
    # Both empty -> 1.0; exactly one empty -> 0.0.
    for key in ("precision_samples", "recall_samples", "f1_samples", "jaccard", "exact_match"):
        assert m[key] == pytest.approx((1 + 0 + 0 + 1) / 4), key
    assert m["n_none"] == 2
    assert m["n_pred_none"] == 2
    assert m["none_precision"] == pytest.approx(1 / 2)
    assert m["none_recall"] == pytest.approx(1 / 2)
    # Ranking metrics only see the two in-scope texts.
    assert m["candidate_recall@1"] == pytest.approx(1.0)


def test_none_precision_is_zero_without_empty_predictions() -> None:
    m = evaluate([[], ["a"]], [["a"], ["a"]], [["a"], ["a"]])
    assert m["n_pred_none"] == 0
    assert m["none_precision"] == 0.0
    assert m["none_recall"] == pytest.approx(0.0)


def test_single_label_accuracy_with_out_of_scope_texts() -> None:
    gold = [["a"], ["b"], [], []]
    predicted = [["a", "b"], ["c"], [], ["a"]]
    assert is_single_label(gold)
    m = evaluate(gold, predicted, [["a", "b"], ["c", "b"], ["a"], ["a"]])
    # Only the top prediction counts; out-of-scope is right iff nothing is predicted.
    assert m["accuracy"] == pytest.approx(2 / 4)
    assert m["in_scope_accuracy"] == pytest.approx(1 / 2)
    assert m["exact_match"] == pytest.approx(1 / 4)


def test_in_scope_accuracy_differs_from_accuracy() -> None:
    m = evaluate([["a"], ["b"], [], []], [["a"], ["c"], [], []], [["a"]] * 4)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["in_scope_accuracy"] == pytest.approx(1 / 2)


def test_is_single_label() -> None:
    assert is_single_label([["a"], [], ["b", "b"]])
    assert not is_single_label([["a"], ["a", "b"]])
    assert is_single_label([])


def test_recall_curve_hand_computed_and_matches_candidate_recall() -> None:
    gold = [["a", "b"], ["c"], []]
    ranked = [["x", "a", "y", "b"], ["c"], ["c"]]
    curve = recall_curve(gold, ranked, max_k=5)
    assert curve == pytest.approx([0.5, 0.75, 0.75, 1.0, 1.0])
    assert evaluate(gold, [[]] * 3, ranked)["candidate_recall@4"] == pytest.approx(curve[3])
    m = evaluate(gold, [[]] * 3, ranked, candidate_k=2)
    assert m["candidate_recall@2"] == pytest.approx(curve[1])


def test_recall_curve_random_monotone_and_consistent() -> None:
    rng = random.Random(7)
    catalog = [f"L{i}" for i in range(40)]
    gold = [rng.sample(catalog, rng.randint(0, 4)) for _ in range(60)]
    ranked = [rng.sample(catalog, rng.randint(5, 30)) for _ in range(60)]
    curve = recall_curve(gold, ranked, max_k=35)
    assert len(curve) == 35
    assert all(b >= a for a, b in itertools.pairwise(curve))
    for k in (1, 7, 30, 35):
        m = evaluate(gold, gold, ranked, ks=(k,), candidate_k=k)
        assert m[f"candidate_recall@{k}"] == pytest.approx(curve[k - 1])
        assert m[f"R@{k}"] == pytest.approx(curve[k - 1])


def test_empty_run_is_nan_free() -> None:
    m = evaluate([], [], [])
    assert m["n"] == 0
    assert m["candidate_recall@0"] == 0.0
    assert all(not math.isnan(v) for v in m.values())
    assert recall_curve([], [], max_k=3) == [0.0, 0.0, 0.0]


def test_value_types() -> None:
    m = evaluate(GOLD, PREDICTED, RANKED)
    for key, value in m.items():
        assert type(value) is (int if key in COUNT_KEYS else float), key


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        evaluate([["a"]], [], [["a"]])
    with pytest.raises(ValueError):
        evaluate([["a"]], [["a"]], [["a"]], ks=(0,))
    with pytest.raises(TypeError):
        evaluate(["ab"], [["a"]], [["a"]])


def test_cross_branch_recovery_counts_only_texts_spanning_branches() -> None:
    branches = {"dog": "pets", "cat": "pets", "coffee": "food", "tax": "money"}
    gold = [["dog", "coffee"], ["dog", "cat"], ["dog", "tax"], ["coffee", "flat-label"]]
    predicted = [["coffee", "dog", "tax"], ["dog"], ["dog"], ["coffee", "flat-label"]]
    out = evaluate(gold, predicted, predicted, branches=branches)
    # Text 2 stays in one branch; texts 1 and 4 are fully recovered, text 3 is not.
    assert out["n_multi_branch"] == 3
    assert out["multi_branch_recovered"] == pytest.approx(2 / 3)
    assert evaluate([["dog"]], [["dog"]], [["dog"]], branches=branches)["n_multi_branch"] == 0
    assert "n_multi_branch" not in evaluate(gold, predicted, predicted)
