"""Evidence maps: window probabilities splatted back into space, with a world (RAS) affine.

Each window's class probabilities are added to the cells of a coarse grid whose centres lie inside
the window, and every cell is divided by the number of windows that covered it (overlap averaging).
By default a cell is one window step wide, so the map is small; ``cell_size=1`` gives one value per
voxel of the preprocessed tensor. The cells tile the tensor exactly (the cell width along an axis is
``size / num_cells``, possibly fractional), so the map's affine is the tensor's affine composed with
a scaling and a half-cell shift, and it lives in the same world (RAS, mm) as the original scan.
:meth:`EvidenceMap.resampled` puts it on any other grid, e.g. the original scan's.

Example:
    >>> import numpy as np, torch
    >>> from medres3d.inference.sliding_window import sliding_window_classify
    >>> result = sliding_window_classify(tensor, net)                 # doctest: +SKIP
    >>> ev = evidence_map(result, tensor_affine, class_names=["a", "b"])  # doctest: +SKIP
    >>> ev.save("evidence.nii.gz", class_name="b")                   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medres3d.errors import ConfigError
from medres3d.io.resample import resample_to_grid
from medres3d.io.writers import save_nifti

if TYPE_CHECKING:
    from medres3d.inference.sliding_window import SlidingWindowResult


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


@dataclass
class EvidenceMap:
    """Per-class evidence on a grid with a RAS affine.

    Attributes:
        array: (K, X, Y, Z) float32, one map per class (probabilities averaged over covering windows).
        affine: 4x4 voxel-to-world (RAS, mm) matrix of the grid.
        class_names: names of the K maps, or None.
        scan_shape, scan_affine: the original scan's grid, when known (see :meth:`in_scan_grid`).
    """

    array: np.ndarray
    affine: np.ndarray
    class_names: list[str] | None = None
    scan_shape: tuple[int, ...] | None = None
    scan_affine: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the grid."""
        return tuple(self.array.shape[1:])

    def for_class(self, which: int | str) -> np.ndarray:
        """The (X, Y, Z) map of one class, by index or name.

        Example:
            >>> EvidenceMap(np.zeros((2, 3, 3, 3), np.float32), np.eye(4), ["a", "b"]).for_class("b").shape
            (3, 3, 3)
        """
        return self.array[self._index(which)]

    def _index(self, which: int | str) -> int:
        if isinstance(which, str):
            if not self.class_names or which not in self.class_names:
                raise ConfigError(f"class {which!r} is not one of {self.class_names}")
            return self.class_names.index(which)
        if not 0 <= which < self.array.shape[0]:
            raise ConfigError(f"class index must be in [0, {self.array.shape[0]}), got {which}")
        return int(which)

    def resampled(self, shape: Sequence[int], affine: np.ndarray, *, order: int = 1) -> EvidenceMap:
        """This map on another grid (e.g. the original scan's), by world coordinates.

        Target voxels outside the map's extent get 0.

        Example:
            >>> ev.resampled(volume.spatial_shape, volume.affine).affine is volume.affine  # doctest: +SKIP
            True
        """
        array = resample_to_grid(self.array, self.affine, shape, affine, order=order)
        affine = np.asarray(affine, dtype=np.float64)
        return EvidenceMap(array, affine, self.class_names, self.scan_shape, self.scan_affine)

    def in_scan_grid(self, *, order: int = 1) -> EvidenceMap:
        """This map resampled onto the original scan's voxel grid (same shape and affine as the scan).

        Example:
            >>> prediction.evidence.in_scan_grid().save("evidence.nii.gz", "lesion")  # doctest: +SKIP
        """
        if self.scan_shape is None or self.scan_affine is None:
            raise ConfigError("this evidence map does not know its scan's grid; use resampled(shape, affine)")
        return self.resampled(self.scan_shape, self.scan_affine, order=order)

    def save(self, path: str | os.PathLike[str], class_name: int | str | None = None) -> Path:
        """Write the map as NIfTI: one class as a 3D image, or all classes as 4D (X, Y, Z, K).

        Example:
            >>> ev.save("evidence.nii.gz", class_name="lesion")    # doctest: +SKIP
        """
        data = self.array.transpose(1, 2, 3, 0) if class_name is None else self.for_class(class_name)
        return save_nifti(np.ascontiguousarray(data, dtype=np.float32), self.affine, path, "evidence map")


def evidence_map(
    result: SlidingWindowResult,
    affine: np.ndarray,
    *,
    cell_size: int | Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> EvidenceMap:
    """Splat a sliding-window result's window probabilities into an overlap-averaged map.

    Args:
        result: what :func:`~medres3d.inference.sliding_window.sliding_window_classify` returned.
        affine: 4x4 RAS affine of the tensor that was classified (e.g. the preprocessed MetaTensor's).
        cell_size: nominal cell width in voxels per axis; default the window step (one cell per step).
        class_names: names of the classes.

    Example:
        >>> ev = evidence_map(result, meta_tensor.affine.numpy(), cell_size=1)  # doctest: +SKIP
        >>> ev.shape == tuple(meta_tensor.shape[1:])                          # doctest: +SKIP
        True
    """
    grid = result.grid
    image_size = grid.image_size
    ndim = len(image_size)
    if cell_size is None:
        nominal = grid.steps
    elif isinstance(cell_size, int):
        nominal = (cell_size,) * ndim
    else:
        nominal = tuple(int(c) for c in cell_size)
    if len(nominal) != ndim or any(c < 1 for c in nominal):
        raise ConfigError(f"cell_size must be a positive integer or {ndim} of them, got {cell_size!r}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (ndim + 1, ndim + 1):
        raise ConfigError(f"affine must be {ndim + 1}x{ndim + 1}, got shape {affine.shape}")

    cells = tuple(_ceil_div(size, min(c, size)) for size, c in zip(image_size, nominal, strict=True))
    probabilities = result.window_probabilities.numpy().astype(np.float64)
    total = np.zeros((probabilities.shape[1], *cells))
    count = np.zeros(cells)
    for box, p in zip(result.window_boxes.tolist(), probabilities, strict=True):
        region = []
        for (start, stop), size, n in zip(box, image_size, cells, strict=True):
            # cell g (width size/n) has its centre inside [start - 0.5, stop - 0.5) exactly when
            # g >= start*n/size - 1/2 and g < stop*n/size - 1/2 (integer arithmetic, no rounding error)
            lo = max(_ceil_div(2 * start * n - size, 2 * size), 0)
            hi = min(_ceil_div(2 * stop * n - size, 2 * size), n)
            region.append(slice(lo, hi))
        total[(slice(None), *region)] += p.reshape(-1, *([1] * ndim))
        count[tuple(region)] += 1
    array = (total / np.maximum(count, 1)).astype(np.float32)

    width = np.array([size / n for size, n in zip(image_size, cells, strict=True)])
    to_voxels = np.eye(ndim + 1)
    to_voxels[:ndim, :ndim] = np.diag(width)
    to_voxels[:ndim, ndim] = (width - 1.0) / 2.0  # a cell's centre, in voxel indices of the tensor
    names = list(class_names) if class_names is not None else None
    return EvidenceMap(array, affine @ to_voxels, names)
