"""The dev split held out of labelled examples."""

from __future__ import annotations

from collections import Counter

import pytest

from retrieval.calibration.splits import holdout


def test_stratified_share_and_single_examples_stay() -> None:
    gold = [["a"]] * 10 + [["b"]] * 5 + [["c"]] + [["a", "b"]] * 2 + [[]] * 3
    keys = [f"text {i}" for i in range(len(gold))]
    train, dev = holdout(gold, 0.2, keys)
    assert sorted(train + dev) == list(range(len(gold)))
    in_dev = Counter(label for i in dev for label in gold[i])
    assert in_dev["a"] <= 2 and in_dev["b"] <= 1 and in_dev["c"] == 0  # floor(0.2 x rows)
    assert in_dev["a"] >= 1  # a label with room lends dev something
    assert {15} <= set(train)  # the only "c" row stays an example
    assert set(range(18, 21)) <= set(dev)  # out-of-scope rows are no label's example
    assert holdout(gold, 0.2, keys) == (train, dev)  # stable


def test_share_is_checked() -> None:
    with pytest.raises(ValueError):
        holdout([["a"]], 1.0)
