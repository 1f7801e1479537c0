"""Quality signals, scores and top-K selection of pseudo-masks (feedback and model signals only)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from bow_gym.pseudo_labels import combined_score, quality_signals, select_top_k


def _box(y0: int, y1: int, x0: int, x1: int, size: int = 16) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_signals_known_answers():
    rewards = np.array([[1, 1, -1, -1], [-1, -1, -1, -1], [1, 1, 1, 1]])
    conf = np.array([[0.2, 0.4, np.nan, np.nan], [np.nan] * 4, [0.5] * 4])
    pseudo = [_box(0, 8, 0, 8), _box(0, 4, 0, 4), _box(0, 8, 0, 8)]
    initial = [None, _box(0, 4, 0, 4), _box(0, 8, 0, 4)]  # dice(8x8, 8x4) = 2*32/(64+32)
    s = quality_signals(rewards, conf, pseudo, initial)
    np.testing.assert_allclose(s["feedback"], [0.5, 0.0, 1.0])
    np.testing.assert_allclose(s["confidence"], [0.3, np.nan, 0.5])
    np.testing.assert_allclose(s["agreement"], [np.nan, 1.0, 2 / 3])


def test_signals_never_take_ground_truth():
    # The quality score is built from feedback and model signals; no argument can carry the
    # ground truth (a filter that reads it would be a bug, however good the numbers).
    for fn in (quality_signals, combined_score, select_top_k):
        params = " ".join(inspect.signature(fn).parameters)
        assert "gt" not in params and "truth" not in params, fn.__name__


def test_signals_reject_bad_shapes():
    with pytest.raises(ValueError, match="rewards must be"):
        quality_signals(np.zeros((2, 3)), np.zeros((2, 3)), [_box(0, 1, 0, 1)], [None])
    with pytest.raises(ValueError, match="confidence must have the shape"):
        quality_signals(np.zeros((1, 3)), np.zeros((1, 2)), [_box(0, 1, 0, 1)], [None])
    with pytest.raises(ValueError, match="differ in shape"):
        quality_signals(np.ones((1, 2)), np.zeros((1, 2)), [_box(0, 1, 0, 1)],
                        [np.ones((8, 8), bool)])


def test_combined_score_ranks_and_skips_missing_signals():
    signals = {"feedback": np.array([0.0, 0.5, 1.0, 0.5]),
               "confidence": np.array([np.nan] * 4),
               "agreement": np.array([0.9, 0.1, np.nan, 0.5])}
    np.testing.assert_allclose(combined_score(signals, "feedback"), [0, 0.5, 1, 0.5])
    both = combined_score(signals, "combined")
    # image 0: feedback rank 0, agreement rank 1 -> 0.5; image 2: only feedback -> 1
    np.testing.assert_allclose(both, [0.5, 0.25, 1.0, 0.5])
    assert np.all(combined_score(signals, "confidence") == 0.5)
    with pytest.raises(ValueError, match="unknown quality signal"):
        combined_score(signals, "dice")


def test_select_top_k():
    score = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    np.testing.assert_array_equal(select_top_k(score, 0.4), [0, 1, 0, 1, 0])
    assert select_top_k(score, 1.0).all()
    assert select_top_k(score, 0.01).sum() == 1
    ties = np.zeros(10)
    picks = [tuple(select_top_k(ties, 0.5, seed=s)) for s in range(5)]
    assert all(sum(p) == 5 for p in picks) and len(set(picks)) > 1  # seeded tie-breaks
    assert picks[0] == tuple(select_top_k(ties, 0.5, seed=0))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top_k"):
            select_top_k(score, bad)
