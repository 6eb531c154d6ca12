"""Classification metrics of a validation pass: accuracy, balanced accuracy, ROC AUC, confusion.

Conventions (those of scikit-learn): balanced accuracy is the mean recall over the classes that
occur in ``y_true``; ROC AUC is one-vs-rest, averaged (macro) over the classes for which it is
defined (at least one positive and one negative), computed per class by MONAI; it is NaN when
no class qualifies (e.g. a validation set with a single class).

Example:
    >>> import numpy as np
    >>> m = classification_metrics([0, 1, 1], np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))
    >>> round(m["accuracy"], 3), m["balanced_accuracy"], m["auc"]
    (0.667, 0.75, 1.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from medres3d.errors import ConfigError


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``[true class, predicted class]``, shape ``(num_classes, num_classes)``.

    Example:
        >>> confusion_matrix([0, 1, 1], [0, 1, 0], 2).tolist()
        [[1, 0], [1, 1]]
    """
    true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape:
        raise ConfigError(f"y_true {true.shape} and y_pred {pred.shape} must have the same shape")
    for name, values in (("y_true", true), ("y_pred", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ConfigError(f"{name} must hold class indices in [0, {num_classes}), got {values.tolist()}")
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (true, pred), 1)
    return counts


def roc_auc_ovr(y_true: Sequence[int], probabilities: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC over the classes where it is defined (NaN if none is).

    Example:
        >>> roc_auc_ovr([0, 1, 0, 1], np.array([[0.9, 0.1], [0.6, 0.4], [0.4, 0.6], [0.2, 0.8]]))
        0.75
    """
    import torch
    from monai.metrics import compute_roc_auc

    true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    scores = []
    for k in range(probs.shape[1]):
        positives = true == k
        if positives.all() or not positives.any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores.append(float(compute_roc_auc(torch.from_numpy(probs[:, k]),
                                                torch.from_numpy(positives.astype(np.int64)))))
    return float(np.mean(scores)) if scores else float("nan")


def classification_metrics(y_true: Sequence[int], probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and ROC AUC of predicted class probabilities ``(N, K)``.

    Example:
        >>> classification_metrics([0, 1], np.array([[0.9, 0.1], [0.2, 0.8]]))["accuracy"]
        1.0
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    true = np.asarray(y_true, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[0] != true.shape[0]:
        raise ConfigError(f"probabilities must be (N, K) with N = {true.shape[0]} labels, got {probs.shape}")
    if true.size == 0:
        nan = float("nan")
        return {"accuracy": nan, "balanced_accuracy": nan, "auc": nan}
    counts = confusion_matrix(true, probs.argmax(axis=1), probs.shape[1])
    support = counts.sum(axis=1)
    recalls = np.diag(counts)[support > 0] / support[support > 0]
    return {
        "accuracy": float(np.trace(counts) / true.size),
        "balanced_accuracy": float(recalls.mean()),
        "auc": roc_auc_ovr(true, probs),
    }


def _thresholds(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores from the highest down, with the true and false positives at or above each."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    ranked, hits = np.asarray(score, dtype=np.float64)[order], np.asarray(positive, dtype=bool)[order]
    last = np.r_[np.flatnonzero(ranked[1:] != ranked[:-1]), ranked.size - 1]  # last index of each score
    tp = np.cumsum(hits)[last].astype(np.float64)
    return ranked[last], tp, (last + 1) - tp


def roc_curve(positive: Sequence[bool], score: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1).

    Example:
        >>> fpr, tpr = roc_curve([False, True, True], [0.2, 0.6, 0.9])
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 1.0, 1.0])
    """
    _, tp, fp = _thresholds(np.asarray(positive), np.asarray(score))
    if tp[-1] == 0 or fp[-1] == 0:
        raise ConfigError("a ROC curve needs both positive and negative scans")
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def precision_recall_curve(positive: Sequence[bool], score: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, highest threshold first, starting at recall 0.

    The first point is (0, precision at the highest threshold), so the curve's step area is the
    average precision.

    Example:
        >>> recall, precision = precision_recall_curve([False, True, True], [0.2, 0.6, 0.9])
        >>> recall.tolist(), precision.round(3).tolist()
        ([0.0, 0.5, 1.0, 1.0], [1.0, 1.0, 1.0, 0.667])
    """
    _, tp, fp = _thresholds(np.asarray(positive), np.asarray(score))
    if tp[-1] == 0:
        raise ConfigError("a precision-recall curve needs positive scans")
    precision = tp / (tp + fp)
    return np.r_[0.0, tp / tp[-1]], np.r_[precision[0], precision]
