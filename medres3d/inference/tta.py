"""Test-time augmentation: a network that averages its predictions over flipped copies of each window.

``Classifier.load(model, tta="flip")`` (``--tta flip`` for ``predict``, ``batch`` and ``evaluate``)
wraps the network in :class:`FlipTTA`. Each window batch is classified as it is and flipped
along every combination of the chosen spatial axes; the "logits" returned are the log of the
mean softmax probability over those copies, so the window softmax is exactly the mean
probability (as for :class:`~medres3d.inference.ensemble.MeanProbabilityEnsemble`).

Why inside the network, on window batches, and not by flipping the whole scan: the windows then
stay where they are, so sliding windows, every aggregation (``mean``, ``max``, ``any``...),
foreground weighting and evidence maps apply unchanged and each window's evidence stays at its
own place in the scan. Flipping the scan instead would move the windows whenever the window grid
is not symmetric, and evidence would have to be flipped back.

Axes are the spatial axes of the preprocessed scan, ``0, 1, 2`` = H, W, D; with the presets'
RAS orientation they are left-right, posterior-anterior and inferior-superior. The cost is one
forward pass per copy: ``2 ** len(axes)``, i.e. x2 (one axis), x4 (two) or x8 (three).

=================  ======================  =======
``tta``            flips                   cost
=================  ======================  =======
``None``/"none"    none                    x1
``"flip"``         all 3 axes              x8
``"flip:0"``       axis 0 (left-right)     x2
``"flip:0,1"``     axes 0 and 1            x4
=================  ======================  =======

``"flip"`` flips all three axes, as training's flip augmentation does by default
(``training.augmentation.flip.axes: [0, 1, 2]``); a network trained without flips of an axis has
no reason to be invariant to it: choose the axes it was trained with (``flip:0`` for left-right
symmetric anatomy).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))
    >>> tta = FlipTTA(net, axes=(0,))
    >>> x = torch.randn(3, 1, 2, 2, 2)
    >>> expected = (net(x).softmax(1) + net(x.flip(2)).softmax(1)) / 2
    >>> torch.allclose(tta(x).softmax(1), expected)
    True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from medres3d.errors import ConfigError

TTA_CHOICES = ("none", "flip", "flip:AXES (e.g. flip:0 or flip:0,1)")


def parse_tta(tta: str | None) -> tuple[int, ...] | None:
    """The flipped spatial axes of a ``tta`` setting, or None for no augmentation.

    Raises:
        ConfigError: naming the value and what is valid.

    Example:
        >>> parse_tta("flip"), parse_tta("flip:0,2"), parse_tta(None)
        ((0, 1, 2), (0, 2), None)
    """
    if tta is None or tta == "none":
        return None
    if not isinstance(tta, str):
        raise ConfigError(f"tta must be one of {', '.join(TTA_CHOICES)}, got {tta!r}")
    kind, _, spec = tta.partition(":")
    if kind != "flip":
        raise ConfigError(f"tta must be one of {', '.join(TTA_CHOICES)}, got {tta!r}")
    if not spec:
        return (0, 1, 2)
    try:
        axes = tuple(int(part) for part in spec.split(","))
    except ValueError:
        axes = ()
    if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ConfigError(f"tta {tta!r}: the axes must be distinct spatial axes among 0, 1, 2 (H, W, D), "
                          f"e.g. 'flip:0' or 'flip:0,1'")
    return tuple(sorted(axes))


class FlipTTA(nn.Module):
    """``net`` run on every flip of a window batch; output ``log(mean_f softmax(net(flip_f(x))))``.

    Args:
        net: a window classifier, ``(N, C, H, W, D) -> (N, K)`` logits.
        axes: spatial axes to flip (0, 1, 2 = H, W, D); every subset is one copy, the identity included.

    Example:
        >>> FlipTTA(torch.nn.Identity(), axes=(0, 1, 2)).num_copies
        8
    """

    def __init__(self, net: nn.Module, axes: Sequence[int] = (0, 1, 2)) -> None:
        super().__init__()
        if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ConfigError(f"FlipTTA axes must be distinct spatial axes among 0, 1, 2, got {tuple(axes)}")
        self.net = net
        self.axes = tuple(axes)
        # every subset of the axes, as dims of the (N, C, H, W, D) batch
        self.flips = [tuple(2 + a for a in subset) for r in range(len(self.axes) + 1)
                      for subset in itertools.combinations(self.axes, r)]
        for name in ("spatial_size", "in_channels", "num_classes"):
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))

    @property
    def num_copies(self) -> int:
        """Forward passes per window batch: ``2 ** len(axes)``."""
        return len(self.flips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W, D)`` -> ``(N, K)`` log mean probabilities over the flips (softmax: the mean)."""
        logs = [torch.log_softmax(self.net(x.flip(dims) if dims else x).float(), dim=1)
                for dims in self.flips]
        return torch.logsumexp(torch.stack(logs), dim=0) - math.log(len(logs))


def with_tta(net: nn.Module, tta: str | None) -> nn.Module:
    """``net`` wrapped in :class:`FlipTTA` as ``tta`` asks, or ``net`` itself for None/``"none"``.

    Example:
        >>> with_tta(torch.nn.Identity(), "flip:0").num_copies
        2
    """
    axes = parse_tta(tta)
    return net if axes is None else FlipTTA(net, axes)
