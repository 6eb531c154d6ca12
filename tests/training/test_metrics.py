"""Validation metrics against hand computations and brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medres3d.errors import ConfigError
from medres3d.training.metrics import classification_metrics, confusion_matrix, roc_auc_ovr


def _pairwise_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUC by its definition: P(score of a positive > score of a negative), ties count one half."""
    pos, neg = scores[positive], scores[~positive]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_hand_computed_three_class_example():
    y = [0, 0, 1, 1, 1, 2]
    probs = np.array([
        [0.7, 0.2, 0.1],   # 0 -> 0
        [0.3, 0.6, 0.1],   # 0 -> 1
        [0.1, 0.8, 0.1],   # 1 -> 1
        [0.2, 0.5, 0.3],   # 1 -> 1
        [0.5, 0.3, 0.2],   # 1 -> 0
        [0.1, 0.3, 0.6],   # 2 -> 2
    ])
    assert confusion_matrix(y, probs.argmax(1), 3).tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    m = classification_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    # class 0: positives {0.7, 0.3} vs negatives {0.1, 0.2, 0.5, 0.1}: 4 + 3 wins of 8
    # class 1: positives {0.8, 0.5, 0.3} vs {0.2, 0.6, 0.3}: 3 + 2 + (1 + 0.5 tie) wins of 9
    # class 2: positive {0.6} beats all 5 negatives
    assert m["auc"] == pytest.approx((7 / 8 + 6.5 / 9 + 1.0) / 3)


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    probs = rng.dirichlet(np.ones(3), size=60).round(1)  # rounding makes many ties
    expected = np.mean([_pairwise_auc(probs[:, k], y == k) for k in range(3)])
    assert roc_auc_ovr(y, probs) == pytest.approx(expected, abs=1e-12)


def test_auc_skips_undefined_classes_and_is_nan_when_none_defined():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    # class 2 never occurs: averaged over classes 0 and 1 only
    expected = (_pairwise_auc(probs[:, 0], np.array([1, 0, 1]) == 1)
                + _pairwise_auc(probs[:, 1], np.array([0, 1, 0]) == 1)) / 2
    assert roc_auc_ovr([0, 1, 0], probs) == pytest.approx(expected)
    assert math.isnan(roc_auc_ovr([1, 1, 1], probs))


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match="y_pred"):
        confusion_matrix([0, 1], [0, 5], 2)
    with pytest.raises(ConfigError, match=r"\(N, K\)"):
        classification_metrics([0, 1, 1], np.zeros((2, 2)))


def test_roc_and_precision_recall_curves_equal_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    from medres3d.training.metrics import precision_recall_curve, roc_curve

    rng = np.random.default_rng(3)
    positive = rng.random(80) < 0.4
    score = np.round(rng.normal(size=80) + positive, 1)  # ties
    fpr, tpr = roc_curve(positive, score)
    ref_fpr, ref_tpr, _ = sk.roc_curve(positive, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    recall, precision = precision_recall_curve(positive, score)
    ref_precision, ref_recall, _ = sk.precision_recall_curve(positive, score)
    # sklearn lists thresholds low to high and ends at (recall 0, precision 1); ours start at the top
    np.testing.assert_allclose(recall[1:], ref_recall[:-1][::-1])
    np.testing.assert_allclose(precision[1:], ref_precision[:-1][::-1])
    assert -np.sum(np.diff(ref_recall) * ref_precision[:-1]) == pytest.approx(
        np.sum(np.diff(recall) * precision[1:]))
