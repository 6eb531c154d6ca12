"""Temperature scaling of scan probabilities: ``softmax(log(p) / T)``.

The temperature is fitted on the validation split after training
(:mod:`medres3d.training.calibration`) and stored in the model file's ``training`` metadata as
``calibration: {"method": "temperature", "temperature": T, ...}``; the Classifier applies it to
every scan's aggregated probabilities. Dividing log-probabilities by ``T > 0`` keeps their order,
so the predicted label never changes; ``T > 1`` softens an overconfident model. For a scan that
is one window this is exactly the usual temperature scaling of the logits (Guo et al. 2017).

Example:
    >>> apply_temperature([0.9, 0.1], 2.0).round(3).tolist()
    [0.75, 0.25]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medres3d.errors import ConfigError

# log(0) would make a certain class absorb every other: probabilities are floored here first
_FLOOR = 1e-12


def apply_temperature(probabilities: Sequence[float] | np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` along the last axis (one scan ``(K,)`` or many ``(N, K)``).

    Raises:
        ConfigError: a temperature that is not a positive finite number.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            np.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive finite number, got {temperature!r}")
    logp = np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), _FLOOR)) / float(temperature)
    logp -= logp.max(axis=-1, keepdims=True)
    scaled = np.exp(logp)
    return scaled / scaled.sum(axis=-1, keepdims=True)

