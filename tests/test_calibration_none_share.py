"""Calibrating for a stated share of out-of-scope traffic moves the threshold the right way."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.calibration.scoring import ShortlistMatrix, best_threshold, text_weights
from retrieval.fusion import Candidate


def test_weights_give_out_of_scope_texts_their_share() -> None:
    weights = text_weights(np.array([True, False, False, False]), 0.5)
    assert weights.sum() == pytest.approx(1.0) and weights[0] == pytest.approx(0.5)
    assert text_weights(np.array([False, False]), 0.5) == pytest.approx([0.5, 0.5])


def test_a_larger_none_share_raises_the_threshold() -> None:
    # In-scope texts' right label sits at similarity 0.45-0.75; out-of-scope texts' best
    # candidate at 0.40-0.60: no threshold separates them, so the share decides.
    rng = np.random.default_rng(0)
    shortlists, gold = [], []
    for i in range(200):
        in_scope = i % 10 != 0  # 10% out of scope in the dev set
        similarity = rng.uniform(0.45, 0.75) if in_scope else rng.uniform(0.40, 0.60)
        shortlists.append([Candidate("a" if in_scope else "b", similarity, similarity)])
        gold.append(["a"] if in_scope else [])
    thresholds = [best_threshold(ShortlistMatrix(shortlists, gold, none_share=share),
                                 "accuracy", [1])[0].min_similarity
                  for share in (None, 0.1, 0.5, 0.8)]
    assert thresholds[0] == thresholds[1]  # the dev set's own share: the same answer
    assert thresholds[1] < thresholds[2] <= thresholds[3]
    assert thresholds[3] >= 0.6  # rejects every out-of-scope text when they are 80%
