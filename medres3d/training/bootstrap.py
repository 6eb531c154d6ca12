"""Evaluation metrics of a test set and their stratified bootstrap confidence intervals.

Every metric is computed from per-scan *weights* ``(B, N)``: row ``b`` says how many times each
of the ``N`` scans is drawn in resample ``b``. The point estimate is the same code with one row
of ones, so the numbers and their intervals can never disagree on a definition, and all ``B``
resamples are computed at once with NumPy (2000 resamples of 1000 scans: well under a second).

Definitions (those of scikit-learn, against which the tests check them):

- ``accuracy``; ``balanced_accuracy``: mean recall over the classes present in the truth.
- ``sensitivity[c]`` (recall), ``specificity[c]`` (recall of "not c"), ``f1[c]``; ``f1_macro``
  averages F1 over the classes present in the truth or the predictions.
- ``roc_auc[c]``: one-vs-rest ROC AUC (ties count one half); ``roc_auc_macro`` averages the
  classes where it is defined. ``average_precision[c]`` as in ``average_precision_score``
  (precision at each distinct threshold weighted by the recall gained), and its macro mean.
- ``brier``: mean over scans of ``sum_k (p_k - y_k)^2``, halved for two classes so that it is the
  usual binary Brier score of the positive class (scikit-learn's ``brier_score_loss``).
- ``ece``: expected calibration error of the top label over ``bins`` equal-width confidence bins,
  ``sum_m |B_m|/N * |accuracy(B_m) - confidence(B_m)|`` (Guo et al. 2017).

A metric that cannot be defined (ROC AUC of a test set with a single class, the sensitivity of
a class with no scans) has ``value=None`` and a ``reason``; it is never a silent NaN.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1]); p = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    >>> est = bootstrap_metrics(y, p, ["normal", "lesion"], num_resamples=200, seed=0)
    >>> est["accuracy"].value, est["roc_auc_macro"].value
    (0.75, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medres3d.errors import ConfigError

OVERALL_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro", "average_precision_macro",
                   "brier", "ece")
PER_CLASS_METRICS = ("sensitivity", "specificity", "f1", "roc_auc", "average_precision")


@dataclass(frozen=True)
class MetricEstimate:
    """One metric on the test set with its bootstrap confidence interval.

    Attributes:
        value: the metric on the whole test set; None when it is undefined there.
        low, high: the percentile bootstrap interval (None when undefined).
        resamples: how many resamples the metric was defined in (the interval's sample).
        reason: why the metric is undefined, or a caveat about its interval; None otherwise.
    """

    value: float | None
    low: float | None
    high: float | None
    resamples: int
    reason: str | None = None

    def to_dict(self) -> dict[str, float | int | str | None]:
        """A JSON-ready dict (value, ci_low, ci_high, resamples, reason)."""
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high,
                "resamples": self.resamples, "reason": self.reason}


def metric_key(name: str, class_name: str | None = None) -> str:
    """``"accuracy"`` or ``"roc_auc[lesion]"``: the key of a metric in the results."""
    return name if class_name is None else f"{name}[{class_name}]"


def resample_weights(y_true: np.ndarray, num_resamples: int, seed: int, *, stratify: bool = True
                     ) -> np.ndarray:
    """``(num_resamples, N)`` draw counts of bootstrap resamples (each row sums to N).

    ``stratify``: each class is resampled among its own scans, so every resample keeps the test
    set's class counts (and no class present in the test set is ever missing from a resample).

    Example:
        >>> w = resample_weights(np.array([0, 0, 0, 1]), 3, seed=0)
        >>> w.shape, w[:, 3].tolist()
        ((3, 4), [1.0, 1.0, 1.0])
    """
    y = np.asarray(y_true)
    integer = isinstance(num_resamples, (int, np.integer)) and not isinstance(num_resamples, bool)
    if not integer or num_resamples < 1:
        raise ConfigError(f"num_resamples must be a positive integer, got {num_resamples!r}")
    rng = np.random.default_rng(seed)
    n = y.shape[0]
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(n)]
    drawn = np.concatenate([g[rng.integers(0, g.size, size=(num_resamples, g.size))] for g in groups],
                           axis=1)
    # One bincount over (resample, scan) pairs: np.add.at would be ~50x slower here.
    flat = drawn + n * np.arange(num_resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=num_resamples * n).reshape(num_resamples, n).astype(np.float64)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Row means over the defined (non-NaN) entries; NaN for a row with none (np.nanmean warns)."""
    defined = ~np.isnan(values)
    return _divide(np.where(defined, values, 0.0).sum(axis=1), defined.sum(axis=1).astype(np.float64))


def _ranked_counts(weights: np.ndarray, score: np.ndarray, positive: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight per distinct score, scores ascending: two ``(B, G)`` arrays."""
    order = np.argsort(score, kind="stable")
    ranked = score[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    w = weights[:, order]
    pos = positive[order]
    return np.add.reduceat(w * pos, starts, axis=1), np.add.reduceat(w * ~pos, starts, axis=1)


def _auc_and_ap(weights: np.ndarray, score: np.ndarray, positive: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    pos_g, neg_g = _ranked_counts(weights, score, positive)
    num_pos, num_neg = pos_g.sum(axis=1), neg_g.sum(axis=1)
    # Mann-Whitney: each positive beats the negatives below its score and half of those tied with it
    neg_below = np.cumsum(neg_g, axis=1) - neg_g
    auc = _divide((pos_g * (neg_below + 0.5 * neg_g)).sum(axis=1), num_pos * num_neg)
    # thresholds from the highest score down: precision there, weighted by the recall it adds
    pos_d, neg_d = pos_g[:, ::-1], neg_g[:, ::-1]
    tp, fp = np.cumsum(pos_d, axis=1), np.cumsum(neg_d, axis=1)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    # without negatives the precision is 1 at every threshold: a number that measures nothing
    ap = _divide((pos_d * precision).sum(axis=1), np.where(num_neg > 0, num_pos, 0.0))
    return auc, ap


def weighted_metrics(y_true: np.ndarray, probabilities: np.ndarray, weights: np.ndarray,
                     class_names: Sequence[str], *, bins: int = 15) -> dict[str, np.ndarray]:
    """Every metric for each row of ``weights`` ``(B, N)``: key -> ``(B,)``, NaN where undefined.

    Example:
        >>> y = np.array([0, 1]); p = np.array([[0.8, 0.2], [0.3, 0.7]])
        >>> weighted_metrics(y, p, np.ones((1, 2)), ["a", "b"])["accuracy"].tolist()
        [1.0]
    """
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    k = len(class_names)
    total = w.sum(axis=1)
    predicted = probs.argmax(axis=1)
    # confusion counts of every resample at once: (B, N) @ (N, K*K) one-hot of (true, predicted)
    cells = np.zeros((y.size, k * k))
    cells[np.arange(y.size), y * k + predicted] = 1.0
    confusion = (w @ cells).reshape(-1, k, k)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    actual, called = confusion.sum(axis=2), confusion.sum(axis=1)
    fp, fn = called - tp, actual - tp
    tn = total[:, None] - tp - fp - fn
    out: dict[str, np.ndarray] = {"accuracy": _divide(tp.sum(axis=1), total)}
    sensitivity, specificity = _divide(tp, actual), _divide(tn, tn + fp)
    f1 = _divide(2 * tp, 2 * tp + fp + fn)
    out["balanced_accuracy"] = _nanmean(sensitivity)
    out["f1_macro"] = _nanmean(f1)
    aucs, aps = [], []
    for c, name in enumerate(class_names):
        auc, ap = _auc_and_ap(w, probs[:, c], y == c)
        aucs.append(auc)
        aps.append(ap)
        out[metric_key("sensitivity", name)] = sensitivity[:, c]
        out[metric_key("specificity", name)] = specificity[:, c]
        out[metric_key("f1", name)] = f1[:, c]
        out[metric_key("roc_auc", name)] = auc
        out[metric_key("average_precision", name)] = ap
    out["roc_auc_macro"] = _nanmean(np.stack(aucs, axis=1))
    out["average_precision_macro"] = _nanmean(np.stack(aps, axis=1))
    onehot = np.eye(k)[y]
    squared = ((probs - onehot) ** 2).sum(axis=1) * (0.5 if k == 2 else 1.0)
    out["brier"] = _divide(w @ squared, total)
    out["ece"] = _ece(w, probs, y, bins, total)
    return out


def confidence_bin(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin index of each confidence: bin ``m`` holds ``(m/bins, (m+1)/bins]`` (0 joins the first bin).

    Example:
        >>> confidence_bin(np.array([0.5, 0.51, 1.0]), 2).tolist()
        [0, 1, 1]
    """
    return np.clip(np.ceil(np.asarray(confidence) * bins).astype(np.int64) - 1, 0, bins - 1)


def _ece(w: np.ndarray, probs: np.ndarray, y: np.ndarray, bins: int, total: np.ndarray) -> np.ndarray:
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    index = confidence_bin(confidence, bins)
    members = np.zeros((y.size, bins))
    members[np.arange(y.size), index] = 1.0
    gap = np.abs(w @ (members * correct[:, None]) - w @ (members * confidence[:, None]))
    return _divide(gap.sum(axis=1), total)


def _undefined_reason(key: str, y: np.ndarray, class_names: Sequence[str]) -> str:
    present = [class_names[c] for c in np.unique(y)]
    if "[" in key:
        name = key[key.index("[") + 1:-1]
        c = list(class_names).index(name)
        if key.startswith("specificity"):
            return f"no scans of a class other than {name!r} in the test set"
        if key.startswith("f1["):
            return f"no scan is {name!r} in the test set or in the predictions"
        if c not in set(y.tolist()):
            return f"no {name!r} scans in the test set"
        return f"every scan of the test set is {name!r}: {key} needs scans of at least two classes"
    if len(present) == 1 and key in ("roc_auc_macro", "average_precision_macro"):
        return (f"the test set holds one class only ({present[0]!r}): {key} needs scans of at least "
                "two classes")
    return f"{key} is undefined on this test set"


def bootstrap_metrics(y_true: Sequence[int] | np.ndarray, probabilities: np.ndarray,
                      class_names: Sequence[str], *, num_resamples: int = 2000, confidence: float = 0.95,
                      seed: int = 0, stratify: bool = True, bins: int = 15) -> dict[str, MetricEstimate]:
    """Every metric of :func:`weighted_metrics` with a percentile bootstrap confidence interval.

    Args:
        y_true: ``(N,)`` true class indices.
        probabilities: ``(N, K)`` predicted probabilities, columns in ``class_names`` order.
        class_names: the model's classes (classes without scans are reported as undefined).
        num_resamples: bootstrap resamples (2000 is the usual choice for 95% intervals).
        confidence: the interval's nominal coverage.
        seed: seed of the resampling (the same seed gives the same intervals).
        stratify: resample within each class (the test set's class counts in every resample).
        bins: confidence bins of the expected calibration error.

    Raises:
        ConfigError: shapes, labels or options that do not fit.

    Example:
        >>> y = np.array([0, 1, 1]); p = np.array([[0.7, 0.3], [0.4, 0.6], [0.8, 0.2]])
        >>> bootstrap_metrics(y, p, ["a", "b"], num_resamples=100)["roc_auc[b]"].value
        0.5
    """
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    k = len(class_names)
    if probs.ndim != 2 or probs.shape != (y.size, k):
        raise ConfigError(f"probabilities must be (N, K) = ({y.size}, {k}), got {probs.shape}")
    if y.size == 0:
        raise ConfigError("no scans to evaluate: the test set is empty (or every scan failed to load)")
    if y.min() < 0 or y.max() >= k:
        raise ConfigError(f"y_true must hold class indices in [0, {k}), got {sorted(set(y.tolist()))}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    point = weighted_metrics(y, probs, np.ones((1, y.size)), class_names, bins=bins)
    samples = weighted_metrics(y, probs, resample_weights(y, num_resamples, seed, stratify=stratify),
                               class_names, bins=bins)
    tail = 100.0 * (1.0 - confidence) / 2.0
    results = {}
    for key, value in point.items():
        drawn = samples[key][~np.isnan(samples[key])]
        if np.isnan(value[0]):
            results[key] = MetricEstimate(None, None, None, 0, _undefined_reason(key, y, class_names))
            continue
        low, high = np.percentile(drawn, [tail, 100.0 - tail]) if drawn.size else (np.nan, np.nan)
        reason = None
        if drawn.size < num_resamples:
            reason = (f"defined in {drawn.size} of {num_resamples} resamples (a class was missing from the "
                      "others); the interval is taken over those")
        results[key] = MetricEstimate(float(value[0]), None if np.isnan(low) else float(low),
                                      None if np.isnan(high) else float(high), int(drawn.size), reason)
    return results
