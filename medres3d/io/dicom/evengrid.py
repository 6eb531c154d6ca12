"""Resampling a tilted or unevenly spaced stack of slices onto an even, orthogonal grid (``resample="even"``).

The stack keeps its in-plane axes and pixel spacing; the third axis becomes the slice normal, with
the median distance between slices as its spacing, from the first slice's depth to the last one's.
Each target slice lies between two real slices along the normal: both are shifted in-plane so that
they sample the target's pixel positions (the gantry-tilt correction: a tilted slice is offset
in-plane by ``depth * tan(tilt)``), then interpolated linearly by depth (the variable-spacing
correction). This is what dcm2niix's tilt and variable-slice-spacing corrections do; a linear
function of world position is reproduced exactly. A gap of a missing slice (more than 1.5 spacings
between two real slices) is not interpolated: target slices inside it get the fill value, as the
unresampled grid fills a missing slice.

Example:
    >>> import numpy as np
    >>> stack = np.stack([np.full((2, 2), v, np.float32) for v in (0.0, 10.0, 30.0)])
    >>> pos = np.array([[0, 0, 0.0], [0, 0, 1.0], [0, 0, 3.0]])
    >>> out, affine = resample_even(stack, pos, (1, 0, 0, 0, 1, 0), (1.0, 1.0), fill=0.0)
    >>> out[:, 0, 0].tolist(), float(affine[2, 2])
    ([0.0, 15.0, 30.0], 1.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medres3d.io.dicom.geometry import unit_vectors

# Two real slices further apart than this many spacings have a missing slice between them.
_GAP_SPACINGS = 1.5
# Shifts and interpolation weights below this are exact copies (no resampling blur).
_EXACT = 1e-6


def resample_even(
    stack: np.ndarray,
    positions: np.ndarray,
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    *,
    fill: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``stack`` (slices ``(N, rows, cols)`` at ``positions``) onto an even orthogonal grid.

    Args:
        stack: the real slices, ordered by depth along the normal (no duplicates).
        positions: ``(N, 3)`` ImagePositionPatient of each slice (LPS, mm).
        orientation: the shared ImageOrientationPatient.
        pixel_spacing: PixelSpacing ``(between rows, between columns)``.
        fill: the value of target pixels that no real slice covers (shifted out, or in a gap).

    Returns:
        ``(slices, affine_lps)``: the ``(M, rows, cols)`` float32 (float64 for float64 input)
        resampled slices and their LPS affine (voxel ``(i, j, k)`` to world, k along the normal).
    """
    from scipy.ndimage import shift as shift_image

    row, col = unit_vectors(orientation, "")
    normal = np.cross(row, col)
    spacing_rows, spacing_cols = (float(v) for v in pixel_spacing)
    pos = np.asarray(positions, dtype=np.float64)
    depth = pos @ normal
    step = float(np.median(np.diff(depth)))
    count = int(np.rint((depth[-1] - depth[0]) / step)) + 1
    origin = pos[0]
    dtype = np.float64 if stack.dtype == np.float64 else np.float32
    shifted: dict[int, np.ndarray] = {}

    def sampled(s: int) -> np.ndarray:
        """Slice s sampled at the target grid's pixel positions (in-plane shift)."""
        if s not in shifted:
            offset = origin - pos[s]  # where the target's pixel (0, 0) lies in slice s's plane
            di, dj = float(offset @ row) / spacing_cols, float(offset @ col) / spacing_rows
            image = stack[s].astype(dtype, copy=False)
            if abs(di) < _EXACT and abs(dj) < _EXACT:
                shifted[s] = image
            else:  # output[j, i] = image[j + dj, i + di]
                shifted[s] = shift_image(image, (-dj, -di), order=1, mode="constant", cval=fill)
        return shifted[s]

    out = np.empty((count, *stack.shape[1:]), dtype=dtype)
    for t in range(count):
        target = depth[0] + t * step
        hi = min(int(np.searchsorted(depth, target - _EXACT * step)), len(depth) - 1)
        if abs(depth[hi] - target) <= _EXACT * step or hi == 0:
            out[t] = sampled(hi)
            continue
        lo = hi - 1
        gap = depth[hi] - depth[lo]
        if gap > _GAP_SPACINGS * step:
            out[t] = fill
            continue
        weight = min(1.0, (target - depth[lo]) / gap)  # the last target may lie past the last slice
        np.multiply(sampled(lo), 1 - weight, out=out[t])
        out[t] += weight * sampled(hi)
    affine = np.eye(4)
    affine[:3, 0] = row * spacing_cols
    affine[:3, 1] = col * spacing_rows
    affine[:3, 2] = normal * step
    affine[:3, 3] = origin
    return out, affine


def tilt_degrees(positions: np.ndarray, orientation: Sequence[float]) -> float:
    """The angle (degrees) between the stacking direction (first to last slice) and the normal.

    Example:
        >>> round(tilt_degrees(np.array([[0, 0, 0.0], [0, 1, 1.0]]), (1, 0, 0, 0, 1, 0)), 3)
        45.0
    """
    row, col = unit_vectors(orientation, "")
    normal = np.cross(row, col)
    pos = np.asarray(positions, dtype=np.float64)
    along = pos[-1] - pos[0]
    cosine = abs(float(along @ normal)) / max(float(np.linalg.norm(along)), 1e-12)
    return float(np.degrees(np.arccos(min(1.0, cosine))))
