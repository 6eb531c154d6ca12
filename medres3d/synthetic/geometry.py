"""Voxel-to-world affines for synthetic volumes (NIfTI convention, RAS+ world, millimetres).

``world = affine @ [i, j, k, 1]``. The orientations are chosen so that the array axes mean the
same anatomical directions as in a scanner's native acquisition of that plane:

============  ==========  ==========  ==============================
orientation   i (axis 0)  j (axis 1)  k (axis 2, slice stacking)
============  ==========  ==========  ==============================
axial         +x (R)      +y (A)      +z (S)
coronal       +x (R)      +z (S)      +y (A)
sagittal      +y (A)      +z (S)      +x (R)
oblique       axial directions rotated 20 deg about x, then 20 deg about z
============  ==========  ==========  ==============================

``flip`` negates a column (the voxel axis then runs the other way), ``tilt_deg`` tilts the slice
plane about the i axis while slices stay stacked along k, as a CT gantry tilt does (the affine is
then sheared: the slice normal is no longer parallel to the stacking direction).

Example:
    >>> from medres3d.synthetic import make_affine
    >>> make_affine((0.8, 0.8, 2.5), "coronal", origin=(-10, 0, 5))[:3, 3].tolist()
    [-10.0, 0.0, 5.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medres3d.errors import ConfigError

ORIENTATIONS = ("axial", "coronal", "sagittal", "oblique")
_OBLIQUE_DEG = 20.0


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    a, b = [n for n in range(3) if n != axis]
    rot = np.eye(3)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    return rot


def direction_matrix(orientation: str) -> np.ndarray:
    """The 3x3 matrix of unit direction columns (RAS) for a named orientation.

    Example:
        >>> direction_matrix("sagittal")[:, 2].tolist()
        [1.0, 0.0, 0.0]
    """
    eye = np.eye(3)
    if orientation == "axial":
        return eye
    if orientation == "coronal":
        return eye[:, [0, 2, 1]]
    if orientation == "sagittal":
        return eye[:, [1, 2, 0]]
    if orientation == "oblique":
        return _rotation(2, _OBLIQUE_DEG) @ _rotation(0, _OBLIQUE_DEG)
    raise ConfigError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")


def make_affine(
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    orientation: str = "axial",
    flip: Sequence[bool] = (False, False, False),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    tilt_deg: float = 0.0,
) -> np.ndarray:
    """A 4x4 RAS voxel-to-world affine (see the module docstring for the axis conventions).

    Args:
        spacing: voxel size in mm along i, j, k (all > 0).
        orientation: "axial", "coronal", "sagittal" or "oblique".
        flip: per voxel axis, whether it runs opposite to the orientation's direction.
        origin: world position (RAS, mm) of voxel (0, 0, 0).
        tilt_deg: gantry tilt, a rotation of the slice plane about the i axis (|tilt| < 60).

    Example:
        >>> a = make_affine((1, 1, 2), "axial", flip=(True, False, False))
        >>> a[:3, :3].diagonal().tolist()
        [-1.0, 1.0, 2.0]
    """
    spacing_arr = np.asarray(spacing, dtype=float)
    if spacing_arr.shape != (3,) or not np.all(np.isfinite(spacing_arr)) or np.any(spacing_arr <= 0):
        raise ConfigError(f"spacing must be three positive finite numbers, got {spacing!r}")
    flips = tuple(bool(f) for f in flip)
    if len(flips) != 3:
        raise ConfigError(f"flip must have three booleans (one per voxel axis), got {flip!r}")
    origin_arr = np.asarray(origin, dtype=float)
    if origin_arr.shape != (3,) or not np.all(np.isfinite(origin_arr)):
        raise ConfigError(f"origin must be three finite numbers, got {origin!r}")
    if not -60.0 < tilt_deg < 60.0:
        raise ConfigError(f"tilt_deg must be within (-60, 60) degrees, got {tilt_deg!r}")

    directions = direction_matrix(orientation).copy()
    if tilt_deg:
        t = np.deg2rad(tilt_deg)
        # Tilting the gantry turns the in-plane j direction towards the stacking direction k;
        # the table still moves along k, so the grid becomes sheared.
        directions[:, 1] = np.cos(t) * directions[:, 1] + np.sin(t) * directions[:, 2]
    signs = np.where(flips, -1.0, 1.0)
    affine = np.eye(4)
    affine[:3, :3] = directions * (spacing_arr * signs)[None, :]
    affine[:3, 3] = origin_arr
    return affine


def centered_origin(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """The affine with its translation replaced so that the volume's centre sits at world (0, 0, 0).

    Example:
        >>> centered_origin((3, 3, 3), make_affine())[:3, 3].tolist()
        [-1.0, -1.0, -1.0]
    """
    out = np.array(affine, dtype=float, copy=True)
    center_index = (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0
    out[:3, 3] = -out[:3, :3] @ center_index
    return out
