"""How the windows' logits become one scan's probabilities: the aggregations and the negative class.

``"mean"``, ``"max"`` and ``"logit-mean"`` summarize windows; ``"any"`` answers "present
anywhere" for detection models (the scan is negative only if every window is), which needs to
know the negative class (:func:`resolve_negative_class`).

Example:
    >>> import torch
    >>> aggregate_windows(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), "logit-mean")[0]
    tensor([0.7311, 0.2689])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medres3d._checks import check_choice
from medres3d.errors import ConfigError

AGGREGATIONS = ("mean", "max", "logit-mean", "any")


def aggregate_windows(
    window_logits: torch.Tensor,
    aggregate: str = "mean",
    weights: torch.Tensor | None = None,
    *,
    negative_class: int = 0,
) -> tuple[torch.Tensor, list[str]]:
    """Combine (W, K) window logits into (K,) volume probabilities.

    ``"mean"``: (weighted) mean of the window softmax probabilities. ``"max"``: per-class maximum of
    the window probabilities (windows with zero weight are ignored); need not sum to 1.
    ``"logit-mean"``: softmax of the (weighted) mean logits. ``"any"``: "present anywhere" for
    detection tasks: the volume is negative only if every window is, so
    ``p(negative) = min over windows of p_w(negative)``, and each other class ``c`` gets the rest in
    proportion to its maximum over windows, ``p(c) = (1 - p(negative)) * max_w p_w(c) / sum over
    c' != negative of max_w p_w(c')``; this sums to 1, and with two classes ``p(positive)`` is the
    maximum over windows of ``p_w(positive)`` (windows with zero weight are ignored, as for
    ``"max"``). Weights that are all zero fall back to uniform weights, with a warning.

    Args:
        window_logits: (W, K) logits of W windows.
        aggregate: one of :data:`AGGREGATIONS`.
        weights: (W,) non-negative window weights, or None for uniform weights.
        negative_class: index of the negative class ("normal") for ``"any"``; unused otherwise.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
        >>> aggregate_windows(logits, "logit-mean")[0]
        tensor([0.7311, 0.2689])
        >>> logits = torch.tensor([[3.0, 0.0], [0.0, 1.0]])   # p_w(class 1): 0.047 and 0.731
        >>> aggregate_windows(logits, "any", negative_class=0)[0]
        tensor([0.2689, 0.7311])
    """
    check_choice("aggregate", aggregate, AGGREGATIONS)
    if window_logits.ndim != 2 or window_logits.shape[0] == 0:
        raise ConfigError(f"window_logits must be (W>0, K), got shape {tuple(window_logits.shape)}")
    num_classes = window_logits.shape[1]
    if aggregate == "any" and (
        isinstance(negative_class, bool)
        or not isinstance(negative_class, int)
        or not 0 <= negative_class < num_classes
    ):
        raise ConfigError(
            f"negative_class must be a class index in [0, {num_classes - 1}], got {negative_class!r}"
        )
    warnings: list[str] = []
    logits = window_logits.float()
    if weights is not None:
        weights = weights.float()
        if float(weights.sum()) <= 0.0:
            warnings.append("every window is background only; windows weighted uniformly")
            weights = None
    probabilities = torch.softmax(logits, dim=-1)
    if aggregate in ("max", "any"):
        if weights is not None:
            probabilities = probabilities[weights > 0]
        if aggregate == "max":
            return probabilities.amax(dim=0), warnings
        return _any_window(probabilities, negative_class), warnings
    source = logits if aggregate == "logit-mean" else probabilities
    if weights is None:
        combined = source.mean(dim=0)
    else:
        combined = (source * weights[:, None]).sum(dim=0) / weights.sum()
    if aggregate == "logit-mean":
        combined = torch.softmax(combined, dim=-1)
    return combined, warnings


def _any_window(probabilities: torch.Tensor, negative_class: int) -> torch.Tensor:
    """The ``"any"`` aggregation of (W, K) window probabilities (see :func:`aggregate_windows`)."""
    p_negative = probabilities[:, negative_class].amin()
    maxima = probabilities.amax(dim=0)
    maxima[negative_class] = 0.0
    total = maxima.sum()
    # total is 0 only when every window gives the negative class exactly 1 (p_negative = 1 then)
    shares = maxima / total if float(total) > 0 else maxima
    combined = (1.0 - p_negative) * shares
    combined[negative_class] = p_negative
    return combined


NEGATIVE_CLASS_NAMES = ("normal", "negative", "background", "healthy")


def resolve_negative_class(class_names: Sequence[str], negative_class: int | str | None = None) -> int:
    """The index of the negative class of ``aggregate="any"``.

    ``negative_class`` is a class name, an index, or a string of digits that is not a class name
    (as typed on the command line). None picks the class named one of
    :data:`NEGATIVE_CLASS_NAMES` (case-insensitive); with none of these, class 0 (the usual
    convention of label 0 = negative); with several, the choice is refused as ambiguous.

    Example:
        >>> resolve_negative_class(["lesion", "normal"]), resolve_negative_class(["a", "b"], "b")
        (1, 1)
    """
    names = list(class_names)
    if negative_class is None:
        found = [index for index, name in enumerate(names) if name.lower() in NEGATIVE_CLASS_NAMES]
        if len(found) > 1:
            raise ConfigError(
                f"classes {[names[i] for i in found]} could each be the negative class of "
                "aggregate='any'; choose one with negative_class (--negative-class)"
            )
        return found[0] if found else 0
    if isinstance(negative_class, str):
        if negative_class in names:
            return names.index(negative_class)
        if not negative_class.isdigit():
            raise ConfigError(f"negative_class must be one of the classes {names} or an index, "
                              f"got {negative_class!r}")
        negative_class = int(negative_class)
    if isinstance(negative_class, bool) or not isinstance(negative_class, int) or not (
        0 <= negative_class < len(names)
    ):
        raise ConfigError(
            f"negative_class must be one of the classes {names} or an index in [0, {len(names) - 1}], "
            f"got {negative_class!r}"
        )
    return negative_class
