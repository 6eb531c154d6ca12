"""Ensembles: several model files as one network whose window probabilities are the members' mean.

``Classifier.load([fold1, fold2, ...])`` loads each member (:func:`load_ensemble`), refuses
members that would prepare or read scans differently (class names, preprocessing, window size,
input channels: the error names what differs and in which file), and runs them as one
:class:`MeanProbabilityEnsemble`. Its "logits" are the log of the mean of the members' softmax
probabilities, so the window softmax is exactly the members' mean probability, and sliding
windows, aggregation, evidence maps and error rows work unchanged. With the default
``aggregate="mean"`` a scan's probabilities are the mean of the members' scan probabilities.

Calibration: a member whose model file (or export sidecar) records a temperature ``T_m`` has its
window probabilities tempered, ``softmax(logits_m / T_m)``, before the members are averaged, so
each member is calibrated by its own temperature (the folds of a cross-validation each fit
theirs) and the Classifier applies no further temperature. For a scan of one window this is
exactly the mean of the members' calibrated predictions. For a scan of several windows the
temperature acts on each window before aggregation, where a single model's Classifier applies it
to the aggregated scan probabilities: the members are combined window by window, so their
separate scan probabilities never exist here.

Example:
    >>> from medres3d.inference.classifier import Classifier
    >>> clf = Classifier.load(["fold_1/model.safetensors", "fold_2/model.safetensors"])  # doctest: +SKIP
    >>> clf.predict("scan.nii.gz").probabilities                                         # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medres3d.errors import ConfigError


class MeanProbabilityEnsemble(nn.Module):
    """Members run on the same window batch; output ``log(mean_m softmax(logits_m))``.

    Args:
        members: networks with the same input (``spatial_size``, ``in_channels``) and classes.
        temperatures: one calibration temperature per member (None: that member uncalibrated);
            default none.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> ens = MeanProbabilityEnsemble([a, b])
        >>> x = torch.randn(3, 2)
        >>> expected = (a(x).softmax(1) + b(x).softmax(1)) / 2
        >>> torch.allclose(ens(x).softmax(1), expected)
        True
        >>> tempered = MeanProbabilityEnsemble([a, b], temperatures=[2.0, None])
        >>> expected = ((a(x) / 2.0).softmax(1) + b(x).softmax(1)) / 2
        >>> torch.allclose(tempered(x).softmax(1), expected)
        True
    """

    def __init__(self, members: Sequence[nn.Module],
                 temperatures: Sequence[float | None] | None = None) -> None:
        super().__init__()
        if len(members) < 1:
            raise ConfigError("an ensemble needs at least one member")
        temperatures = [None] * len(members) if temperatures is None else list(temperatures)
        if len(temperatures) != len(members):
            raise ConfigError(f"{len(temperatures)} temperatures given for {len(members)} ensemble members")
        for t in temperatures:
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))
                                  or not (math.isfinite(t) and t > 0)):
                raise ConfigError(f"ensemble member temperatures must be positive finite numbers, got {t!r}")
        self.members = nn.ModuleList(members)
        self.temperatures = temperatures
        first = members[0]
        for name in ("spatial_size", "in_channels", "num_classes"):
            if hasattr(first, name):
                setattr(self, name, getattr(first, name))

    @property
    def input(self) -> _MembersInput:
        """Stands for the members' input normalizations: the Classifier's fitted-statistics check."""
        return _MembersInput(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, *spatial)`` -> ``(N, K)`` log mean probabilities (softmax gives the mean)."""
        # logsumexp of the members' log-softmax: the log of the summed probabilities, without underflow
        # logits / T is softmax(log p / T) up to a constant: the calibration of a single model file
        stacked = torch.stack([torch.log_softmax(m(x).float() / (t or 1.0), dim=1)
                               for m, t in zip(self.members, self.temperatures, strict=True)])
        return torch.logsumexp(stacked, dim=0) - math.log(len(self.members))


class _MembersInput:
    def __init__(self, members: nn.ModuleList) -> None:
        self._members = members

    def require_fitted(self) -> None:
        for member in self._members:
            normalization = getattr(getattr(member, "module", member), "input", None)
            if normalization is not None:  # exported runtimes were checked at export time
                normalization.require_fitted()


def _describe(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def check_members(paths: Sequence[str], loaded: Sequence[Any]) -> None:
    """Refuse members that differ in class names, preprocessing, window size or input channels.

    Raises:
        ConfigError: naming the first property that differs, both values and both files.
    """
    first = loaded[0]
    properties = {
        "class names": lambda m: list(m.class_names),
        "preprocessing": lambda m: _describe(m.preprocessing),
        "network input size": lambda m: tuple(getattr(m.net, "spatial_size", ()) or ()),
        "input channels": lambda m: getattr(m.net, "in_channels", None),
    }
    for path, member in zip(paths[1:], loaded[1:], strict=True):
        for what, get in properties.items():
            if get(member) != get(first):
                raise ConfigError(f"ensemble members must share their {what}: {paths[0]} has {get(first)!r}, "
                                  f"{path} has {get(member)!r}")


def load_ensemble(model_files: Sequence[str | os.PathLike[str]], **load_options: Any) -> Any:
    """Load every member with :func:`~medres3d.inference.network_loader.load_network` and combine them.

    Returns a ``LoadedNetwork`` whose ``net`` is a :class:`MeanProbabilityEnsemble`.

    Raises:
        ConfigError: no member, or members that differ (see :func:`check_members`).
        ModelFileError, NormalizationNotFittedError: as for one model file, naming the member.

    Example:
        >>> loaded = load_ensemble(["a.safetensors", "b.safetensors"], device="cpu")  # doctest: +SKIP
    """
    from medres3d.inference.network_loader import LoadedNetwork, load_network
    from medres3d.modelfile import require_fitted_normalization

    paths = [os.fspath(m) for m in model_files]
    if not paths:
        raise ConfigError("an ensemble needs at least one model file, got none")
    loaded = [load_network(p, **load_options) for p in paths]
    check_members(paths, loaded)
    for path, member in zip(paths, loaded, strict=True):
        if hasattr(getattr(member.net, "module", member.net), "input"):
            require_fitted_normalization(member.net, path)  # the error names the member's file
    first = loaded[0]
    # each member's own temperature inside the ensemble; none left for the Classifier to apply
    ensemble = MeanProbabilityEnsemble([m.net for m in loaded], [m.temperature for m in loaded])
    return LoadedNetwork(ensemble, list(first.class_names), first.preprocessing, first.device,
                         dict(first.options))
