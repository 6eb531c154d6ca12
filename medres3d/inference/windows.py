"""Window geometry for sliding-window inference and patch training (pure Python, no torch).

Windows of exactly the network's input size tile a volume with MONAI's ``dense_patch_slices``
semantics: the step along each axis is ``int(window * (1 - overlap))`` (at least 1), windows stay
inside the volume (the last one is moved back to end at the volume's edge), and along an axis where
the volume is smaller than the window there is one window, centred, whose start is negative: the
part outside the volume is padding (MONAI pads ``diff // 2`` before and the rest after).

Example:
    >>> grid = WindowGrid.create((70, 32, 20), (32, 32, 32), overlap=0.5)
    >>> grid.starts
    ((0, 16, 32, 38), (0,), (-6,))
    >>> grid.num_windows, grid.box(1)
    (4, ((16, 48), (0, 32), (-6, 26)))
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from medres3d.errors import ConfigError

Box = tuple[tuple[int, int], ...]


def _per_axis_overlap(overlap: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    values = (overlap,) * ndim if isinstance(overlap, (int, float)) else tuple(overlap)
    if len(values) != ndim:
        raise ConfigError(f"overlap must be one number or {ndim} numbers, got {overlap!r}")
    for value in values:
        if not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), got {overlap!r}")
    return tuple(float(v) for v in values)


def window_step(size: int, window: int, overlap: float) -> int:
    """Distance between consecutive window starts along one axis (MONAI's scan interval).

    Example:
        >>> window_step(100, 32, 0.5), window_step(100, 32, 0.0), window_step(32, 32, 0.5)
        (16, 32, 32)
    """
    if size <= window:
        return window
    return max(int(window * (1.0 - overlap)), 1)


def window_starts(size: int, window: int, overlap: float) -> tuple[int, ...]:
    """Start indices of the windows along one axis of ``size`` voxels.

    Example:
        >>> window_starts(70, 32, 0.5)
        (0, 16, 32, 38)
        >>> window_starts(20, 32, 0.5)    # smaller than the window: one centred, padded window
        (-6,)
    """
    if size <= window:
        return (-((window - size) // 2),)
    step = window_step(size, window, overlap)
    count = 1
    while (count - 1) * step + window < size:
        count += 1
    return tuple(min(i * step, size - window) for i in range(count))


@dataclass(frozen=True)
class WindowGrid:
    """The windows tiling one volume: per-axis start indices, combined in C order (last axis fastest).

    Attributes:
        image_size: spatial size of the volume, e.g. (H, W, D).
        window_size: spatial size of every window.
        starts: per axis, the start index of each window along that axis (negative: padding).
        steps: per axis, the nominal step between starts.
    """

    image_size: tuple[int, ...]
    window_size: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    steps: tuple[int, ...]

    @classmethod
    def create(
        cls, image_size: Sequence[int], window_size: Sequence[int], overlap: float | Sequence[float] = 0.5
    ) -> WindowGrid:
        """Tile ``image_size`` with windows of ``window_size`` and the given fractional overlap.

        Example:
            >>> WindowGrid.create((64, 64), (32, 32), 0.5).shape
            (3, 3)
        """
        image = tuple(int(s) for s in image_size)
        window = tuple(int(s) for s in window_size)
        if len(image) != len(window):
            raise ConfigError(f"window_size {window} must have one entry per spatial axis of {image}")
        if any(s < 1 for s in image) or any(w < 1 for w in window):
            raise ConfigError(f"sizes must be positive, got image {image} and window {window}")
        overlaps = _per_axis_overlap(overlap, len(image))
        starts = tuple(window_starts(s, w, o) for s, w, o in zip(image, window, overlaps, strict=True))
        steps = tuple(window_step(s, w, o) for s, w, o in zip(image, window, overlaps, strict=True))
        return cls(image, window, starts, steps)

    @property
    def shape(self) -> tuple[int, ...]:
        """Number of windows along each axis."""
        return tuple(len(s) for s in self.starts)

    @property
    def num_windows(self) -> int:
        """Total number of windows."""
        count = 1
        for n in self.shape:
            count *= n
        return count

    @property
    def needs_padding(self) -> bool:
        """True when the volume is smaller than the window along some axis."""
        return any(s < w for s, w in zip(self.image_size, self.window_size, strict=True))

    def box(self, index: int) -> Box:
        """The ``[start, stop)`` range per axis of window ``index`` (C order over the grid)."""
        if not 0 <= index < self.num_windows:
            raise ConfigError(f"window index must be in [0, {self.num_windows}), got {index}")
        combo = []
        for axis in reversed(range(len(self.starts))):
            index, position = divmod(index, len(self.starts[axis]))
            combo.append(self.starts[axis][position])
        combo.reverse()
        return tuple((start, start + w) for start, w in zip(combo, self.window_size, strict=True))

    def boxes(self) -> Iterator[Box]:
        """Every window's ``[start, stop)`` ranges, lazily, in the same order as :meth:`box`."""
        for combo in itertools.product(*self.starts):
            yield tuple((start, start + w) for start, w in zip(combo, self.window_size, strict=True))


def clip_box(box: Box, image_size: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Split a window box into (slices of the volume, slices of the window) for the part inside.

    Example:
        >>> clip_box(((-6, 26), (0, 32)), (20, 40))
        ((slice(0, 20, None), slice(0, 32, None)), (slice(6, 26, None), slice(0, 32, None)))
    """
    source, target = [], []
    for (start, stop), size in zip(box, image_size, strict=True):
        lo, hi = max(start, 0), min(stop, int(size))
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    return tuple(source), tuple(target)
