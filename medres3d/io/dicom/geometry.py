"""Stack planning: from slice positions to one regular voxel grid, with every irregularity reported.

The planner is pure geometry (no pixels, no files), shared by single-frame series and Enhanced
multi-frame files. Slices are ordered by the projection of ``ImagePositionPatient`` on the slice
normal (row x column direction of ``ImageOrientationPatient``), never by InstanceNumber or file
name. It then decides where each slice goes on the grid and what the affine is:

- duplicate positions: the later slices are listed in ``duplicates`` for the caller, who compares
  pixels (identical copies are dropped; different ones are a conflict) and reports them;
- spacing: the median of the distances between consecutive positions;
- missing slices: a gap of about ``q`` times the spacing leaves ``q - 1`` empty grid slices
  (``missing``) that the caller fills, so the affine stays exact for every real slice;
- uneven spacing: positions further than a tolerance from the regular grid are reported;
- gantry tilt: the third affine column is the true inter-slice vector, sheared when the slices are
  not stacked along their normal; the angle is reported.

Warnings are plain strings that start with a stable code (``missing-slice:``, ``uneven-spacing:``,
``gantry-tilt:``...), documented in ``docs/dicom.md``.

Example:
    >>> import numpy as np
    >>> plan = plan_stack(
    ...     positions=np.array([[0, 0, 2.0], [0, 0, 0.0], [0, 0, 6.0], [0, 0, 8.0]]),
    ...     orientation=(1, 0, 0, 0, 1, 0), pixel_spacing=(0.5, 0.5), labels=["a", "b", "c", "d"])
    >>> plan.num_slices, [k for _, k in plan.slices], plan.missing
    (5, [0, 1, 3, 4], [2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from medres3d.errors import SeriesGeometryError

# IOP direction cosines further than this from unit length / orthogonality are corrupt, not rounding.
_COSINE_TOL = 1e-3
# Positions closer than this fraction of the smallest pixel spacing are the same position.
_SAME_POSITION_FRACTION = 0.01
# A slice further than this fraction of the slice spacing from its grid position is "uneven".
_UNEVEN_FRACTION = 0.01
# A stacking direction further than this from the normal (degrees) is reported as a tilt.
_TILT_WARN_DEG = 0.1


@dataclass
class StackPlan:
    """Where each slice goes on the voxel grid, the affine, and what was irregular.

    Attributes:
        slices: ``(source index, grid index k)`` for every slice that is kept, ordered by k.
        duplicates: ``(source index, source index of the kept slice at the same position)``.
        missing: grid indices with no slice (to be filled by the caller).
        num_slices: grid size along k.
        affine_lps: 4x4 voxel ``(i, j, k)`` -> LPS world (mm); i along the IOP row direction
            (pixel columns), j along the IOP column direction (pixel rows).
        warnings: human messages, each starting with a stable code.
        errors: the subset of problems that ``strict=True`` turns into a SeriesGeometryError.
    """

    slices: list[tuple[int, int]]
    duplicates: list[tuple[int, int]]
    missing: list[int]
    num_slices: int
    affine_lps: np.ndarray
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def affine_ras(self) -> np.ndarray:
        """The affine in RAS+ (NIfTI convention): LPS with the first two world axes negated."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps


def unit_vectors(orientation: Sequence[float], where: str) -> tuple[np.ndarray, np.ndarray]:
    """The row and column direction cosines of an ImageOrientationPatient, normalized and checked.

    Raises:
        SeriesGeometryError: not six finite numbers, a zero vector, or non-perpendicular vectors.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise SeriesGeometryError(
            where, f"ImageOrientationPatient must be 6 finite numbers, got {orientation!r}"
        )
    row, col = iop[:3], iop[3:]
    norms = np.linalg.norm(row), np.linalg.norm(col)
    if min(norms) < 0.5:
        raise SeriesGeometryError(
            where, f"ImageOrientationPatient has a zero direction vector: {orientation!r}"
        )
    row, col = row / norms[0], col / norms[1]
    if abs(float(np.dot(row, col))) > _COSINE_TOL:
        raise SeriesGeometryError(
            where,
            "ImageOrientationPatient row and column directions are not perpendicular "
            f"(cosine {float(np.dot(row, col)):.4f}): {orientation!r}",
        )
    return row, col


def plan_stack(
    positions: np.ndarray,
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    labels: Sequence[str],
    where: str = "",
) -> StackPlan:
    """Order slices along the normal and lay them on one regular grid (see the module docstring).

    Args:
        positions: ``(N, 3)`` ImagePositionPatient of each slice (LPS, mm), N >= 1.
        orientation: the six ImageOrientationPatient values shared by all slices.
        pixel_spacing: PixelSpacing ``(between rows, between columns)`` in mm, both > 0.
        labels: a name per slice for messages (file name, or "file frame n").
        where: the series (folder or file) named in errors.

    Returns:
        The StackPlan. A single slice gives ``num_slices == 1`` and the identity step along k;
        callers refuse it as a 2D image.

    Raises:
        SeriesGeometryError: orientation or spacing invalid, or two slices at the same depth along
            the normal but at different places in the plane (not one stack).

    Example:
        >>> plan = plan_stack(np.array([[0, 0, 0.0], [0, 0, 0.0]]), (1, 0, 0, 0, 1, 0), (1, 1), ["a", "b"])
        >>> plan.duplicates
        [(1, 0)]
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(pos) == 0 or len(labels) != len(pos):
        raise SeriesGeometryError(
            where, f"expected one label per slice, got {len(labels)} for {len(pos)} slices"
        )
    if not np.all(np.isfinite(pos)):
        bad = labels[int(np.flatnonzero(~np.isfinite(pos).all(axis=1))[0])]
        raise SeriesGeometryError(where, f"ImagePositionPatient of {bad} is not finite")
    spacing = np.asarray(pixel_spacing, dtype=np.float64)
    if spacing.shape != (2,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise SeriesGeometryError(where, f"PixelSpacing must be two positive numbers, got {pixel_spacing!r}")
    row, col = unit_vectors(orientation, where)
    normal = np.cross(row, col)
    same_tol = _SAME_POSITION_FRACTION * float(spacing.min())

    depth = pos @ normal
    # Stable sort on depth, ties kept in the caller's (deterministic, file-name) order.
    order = np.argsort(depth, kind="stable")
    kept: list[int] = []
    duplicates: list[tuple[int, int]] = []
    for idx in order.tolist():
        if kept and abs(depth[idx] - depth[kept[-1]]) < same_tol:
            if np.linalg.norm(pos[idx] - pos[kept[-1]]) >= same_tol:
                raise SeriesGeometryError(
                    where,
                    f"{labels[idx]} and {labels[kept[-1]]} lie in the same plane (depth {depth[idx]:.3f} mm) "
                    f"at different in-plane positions {pos[idx].round(3).tolist()} and "
                    f"{pos[kept[-1]].round(3).tolist()}: not one stack of slices",
                )
            duplicates.append((idx, kept[-1]))
        else:
            kept.append(idx)

    affine = np.eye(4)
    affine[:3, 0] = row * spacing[1]
    affine[:3, 1] = col * spacing[0]
    affine[:3, 3] = pos[kept[0]]
    plan = StackPlan(
        slices=[(kept[0], 0)], duplicates=duplicates, missing=[], num_slices=1, affine_lps=affine
    )
    if len(kept) == 1:
        affine[:3, 2] = normal
        return plan

    gaps = np.diff(depth[kept])
    step_depth = float(np.median(gaps))
    steps = np.maximum(1, np.rint(gaps / step_depth)).astype(np.int64)
    grid = np.concatenate([[0], np.cumsum(steps)])
    # The inter-slice vector: median over consecutive pairs of (position difference / grid steps),
    # exact for a regular (possibly tilted) stack and robust to one odd gap.
    step = np.median(np.diff(pos[kept], axis=0) / steps[:, None], axis=0)
    affine[:3, 2] = step
    plan.slices = [(src, int(k)) for src, k in zip(kept, grid, strict=True)]
    plan.num_slices = int(grid[-1]) + 1
    plan.missing = sorted(set(range(plan.num_slices)) - {int(k) for k in grid})

    _report_missing(plan, kept, steps, gaps, step_depth, labels)
    _report_uneven(plan, pos, kept, grid, step, gaps / steps, step_depth, labels)
    _report_tilt(plan, step, normal)
    return plan


def _report_missing(
    plan: StackPlan,
    kept: list[int],
    steps: np.ndarray,
    gaps: np.ndarray,
    step_depth: float,
    labels: Sequence[str],
) -> None:
    for n in np.flatnonzero(steps > 1).tolist():
        count = int(steps[n]) - 1
        msg = (
            f"missing-slice: {count} slice(s) missing between {labels[kept[n]]} and {labels[kept[n + 1]]} "
            f"(gap {gaps[n]:.3f} mm = {gaps[n] / step_depth:.2f} x the spacing {step_depth:.3f} mm); "
            "the grid keeps the missing position(s), filled with the volume's minimum value, so every "
            "real slice stays at its true position"
        )
        plan.warnings.append(msg)
        plan.errors.append(msg)


def _report_uneven(
    plan: StackPlan,
    pos: np.ndarray,
    kept: list[int],
    grid: np.ndarray,
    step: np.ndarray,
    gaps: np.ndarray,
    step_depth: float,
    labels: Sequence[str],
) -> None:
    predicted = pos[kept[0]] + grid[:, None] * step
    errors = np.linalg.norm(pos[kept] - predicted, axis=1)
    worst = int(np.argmax(errors))
    if errors[worst] > _UNEVEN_FRACTION * step_depth + 1e-6:
        msg = (
            f"uneven-spacing: slice spacing varies from {gaps.min():.3f} to {gaps.max():.3f} mm "
            f"(median {step_depth:.3f} mm); the affine uses the median, so slices are off their true "
            f"position by up to {errors[worst]:.3f} mm (worst: {labels[kept[worst]]})"
        )
        plan.warnings.append(msg)
        plan.errors.append(msg)


def _report_tilt(plan: StackPlan, step: np.ndarray, normal: np.ndarray) -> None:
    along = float(np.dot(step, normal))
    angle = float(np.degrees(np.arccos(min(1.0, abs(along) / float(np.linalg.norm(step))))))
    if angle > _TILT_WARN_DEG:
        plan.warnings.append(
            f"gantry-tilt: slices are stacked {angle:.2f} degrees off their normal (gantry tilt or "
            "sheared acquisition); the affine's third column is the true inter-slice vector, so the "
            "grid is sheared but exact; resample (e.g. MONAI Spacing) before tools that assume "
            "orthogonal axes"
        )
