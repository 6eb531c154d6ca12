"""Fitting a temperature on the validation split: the one-parameter calibration of Guo et al. (2017).

:func:`fit_temperature` minimizes the negative log-likelihood of ``softmax(log(p) / T)`` over
``T`` (bounded search on ``log T``); the trainer stores the result in the model file's
provenance when it lowers the validation NLL (``training.calibration: auto``, the default) or
always (``temperature``), and the Classifier applies it (:mod:`medres3d.inference.calibration`).

Example:
    >>> import numpy as np
    >>> probs = np.array([[0.99, 0.01], [0.98, 0.02], [0.03, 0.97], [0.95, 0.05]])
    >>> fit = fit_temperature(probs, np.array([0, 1, 1, 0]))
    >>> fit.temperature > 1, fit.nll_after < fit.nll_before
    (True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medres3d.errors import ConfigError
from medres3d.inference.calibration import apply_temperature

CALIBRATIONS = ("auto", "temperature", "none")
TEMPERATURE_BOUNDS = (0.05, 20.0)
AUTO_MIN_SCANS = 20
"""``calibration: auto`` fits no temperature on fewer validation scans: one number from a handful of
scans (often all classified correctly, where the NLL only falls as the temperature shrinks) made
the test probabilities worse than none (issue 13's tiny-data runs)."""


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the NLL it gives on the data it was fitted on."""

    temperature: float
    nll_before: float
    nll_after: float
    num_scans: int

    def to_dict(self) -> dict[str, float | int | str]:
        """The model file's ``calibration`` entry."""
        return {"method": "temperature", **asdict(self)}


def negative_log_likelihood(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Mean ``-log p[true class]`` (probabilities floored at 1e-12).

    Example:
        >>> round(negative_log_likelihood(np.array([[0.5, 0.5]]), np.array([0])), 4)
        0.6931
    """
    picked = np.asarray(probabilities, dtype=np.float64)[np.arange(len(y)), np.asarray(y)]
    return float(-np.log(np.maximum(picked, 1e-12)).mean())


def fit_temperature(probabilities: np.ndarray, y: np.ndarray, *,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> TemperatureFit:
    """The temperature in ``bounds`` minimizing the NLL of ``softmax(log(p) / T)`` on ``(p, y)``.

    Raises:
        ConfigError: no scans, or shapes that do not fit.
    """
    from scipy.optimize import minimize_scalar

    probs, y = np.asarray(probabilities, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[0] != y.shape[0] or y.size == 0:
        raise ConfigError(f"fit_temperature needs (N > 0, K) probabilities and N labels, got "
                          f"{probs.shape} and {y.shape}")

    def nll(log_t: float) -> float:
        return negative_log_likelihood(apply_temperature(probs, float(np.exp(log_t))), y)

    found = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                            options={"xatol": 1e-6})
    temperature = float(np.exp(found.x))
    return TemperatureFit(temperature, negative_log_likelihood(probs, y), nll(float(found.x)), int(y.size))


def auto_refusal(fit: TemperatureFit, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> str | None:
    """Why ``calibration: auto`` keeps no temperature from ``fit``, or None when it keeps it.

    It is refused on fewer than :data:`AUTO_MIN_SCANS` validation scans, at a search bound (the NLL
    was still falling: typically a perfectly separated validation split, where no temperature is
    identifiable), and when it does not lower the validation NLL.

    Example:
        >>> auto_refusal(TemperatureFit(0.05, 0.3, 0.01, 40))
        'the fitted temperature is at the search bound 0.05 (the validation NLL was still falling: ...'
    """
    if fit.num_scans < AUTO_MIN_SCANS:
        return (f"{fit.num_scans} validation scans are too few to fit a temperature on (calibration: auto "
                f"needs {AUTO_MIN_SCANS}; calibration: temperature forces it)")
    if not bounds[0] * 1.02 < fit.temperature < bounds[1] / 1.02:
        return (f"the fitted temperature is at the search bound {fit.temperature:.3g} (the validation NLL "
                "was still falling: a perfectly separated validation split gives no temperature)")
    if not fit.nll_after < fit.nll_before:
        return f"temperature scaling did not lower the validation NLL ({fit.nll_before:.4f})"
    return None
