"""One DICOM series (or the frames of one multi-frame file) to a Volume, with geometry checks.

The slices' positions are planned onto one grid first (:func:`medres3d.io.dicom.geometry.plan_stack`),
the voxel count is checked against the limit, the output array is allocated once and every slice
is decoded straight into its place (in threads: file reads, NumPy and the decoder plugins release
the GIL; uncompressed slices of at most 256x256 pixels in the calling thread, where a hand-off
costs more than the read), rescaled per slice with its own RescaleSlope/Intercept. Then:

- duplicates: a slice at the position of another is dropped when its pixels are identical
  (``duplicate-slice``), and otherwise reported as ``conflicting-duplicate`` (the first file by name
  is kept); ``strict=True`` raises instead;
- missing slices: the empty grid slices are filled with the volume's minimum (``missing-slice``);
- MONOCHROME1 data keeps its stored values (see ``docs/dicom.md``).

Voxel layout: ``array[0, i, j, k]`` is ``pixel_array[j, i]`` of slice k, i.e. i runs along the
ImageOrientationPatient row direction (pixel columns) and j along the column direction (pixel rows);
the affine is RAS+ (DICOM's LPS with x and y negated). The array is a transposed view of the
slice-major buffer (Fortran-ordered, like nibabel's NIfTI arrays), so no copy is made.

Example:
    >>> from medres3d.io.dicom import find_dicom_series
    >>> vol = find_dicom_series("ct_folder/")[0].load()   # doctest: +SKIP
    >>> vol.shape, vol.warnings                             # doctest: +SKIP
    ((1, 512, 512, 190), [])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medres3d._checks import check_choice
from medres3d.errors import ConfigError, CorruptFileError, SeriesGeometryError, UnsupportedFormatError
from medres3d.io.dicom.geometry import StackPlan, plan_stack
from medres3d.io.dicom.pixels import rescale_into, stored_range
from medres3d.io.dicom.types import FileHeader
from medres3d.io.limits import DEFAULT_MAX_VOXELS, check_voxel_count
from medres3d.io.volume import Volume

logger = logging.getLogger("medres3d.io.dicom")

# DICOM Rows/Columns are 16-bit; anything outside is a corrupt header.
_MAX_SIDE = 65535
# Uncompressed slices of at most this many pixels are read in this thread, not a pool: each read is
# one readinto of <= 128 KiB, and handing it to a thread cost more than the read (2-core VM, hot
# cache: 256x256 x 60 slices 11.8 -> 2.7 ms, 96x96 x 1200 files in a 4D series 0.22 -> 0.05 s).
# Larger slices keep the pool, whose parallel reads help on a cold cache or a network drive.
_SMALL_NATIVE_PIXELS = 256 * 256
# Warnings listing files name at most this many.
_MAX_NAMED = 5
_DTYPES = ("float32", "float64", "native")
# resample=: None keeps the slices where they are (an exact, possibly sheared grid); "even"
# resamples a tilted or unevenly spaced stack onto an even orthogonal grid (medres3d.io.dicom.evengrid).
RESAMPLE_CHOICES = ("even",)
# The plan's warnings that resample="even" corrects.
_EVEN_CORRECTS = ("uneven-spacing:", "gantry-tilt:")


# (shape, dtype) -> an uninitialized array of that shape and dtype (np.empty, or a view of a larger one)
Allocator = Callable[[tuple[int, ...], np.dtype], np.ndarray]


@dataclass(frozen=True)
class SliceSource:
    """One 2D image to stack: where it is, how to read it, how to rescale it."""

    path: Path
    label: str
    position: Sequence[float]
    slope: float
    intercept: float
    read: Callable[[], np.ndarray]  # -> (rows, columns) stored values


def check_image_size(header: FileHeader) -> None:
    """Rows and Columns must be 1..65535 (anything else is a corrupt header)."""
    for name, value in (("Rows", header.rows), ("Columns", header.columns)):
        if not 0 < value <= _MAX_SIDE:
            raise CorruptFileError(header.path, f"{name}={value} is not a valid image size (1..{_MAX_SIDE})")


def series_meta(header: FileHeader) -> dict[str, Any]:
    """The identifiers every DICOM volume carries in ``Volume.meta``."""
    return {
        "format": "dicom",
        "patient_id": header.patient_id,
        "study_uid": header.study_uid,
        "series_uid": header.series_uid,
        "series_number": header.series_number,
        "description": header.description,
        "sop_class_uid": header.sop_class_uid,
        "transfer_syntax": header.transfer_syntax,
        "photometric": header.photometric,
    }


def resolve_dtype(
    dtype: object, sources: Sequence[SliceSource], headers: Sequence[FileHeader]
) -> tuple[np.dtype, str | None]:
    """The output dtype for ``dtype`` (see :func:`load_series`); a warning if "native" cannot be kept.

    The "native" integer type holds the stored range of every file: files of one series can differ
    in PixelRepresentation or BitsStored, and a value outside the chosen type would wrap silently.
    """
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    check_choice("dtype", name, _DTYPES)
    if name != "native":
        return np.dtype(name), None
    slopes = {s.slope for s in sources}
    intercepts = {s.intercept for s in sources}
    if slopes != {1.0} or any(not float(b).is_integer() for b in intercepts):
        return np.dtype(np.float32), (
            "native-dtype: the rescale (slope/intercept) is not integral, so the values are returned "
            "as float32"
        )
    ranges = {stored_range(h) for h in headers}
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    lo, hi = lo + int(min(intercepts)), hi + int(max(intercepts))
    for candidate in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32):
        info = np.iinfo(candidate)
        if info.min <= lo and hi <= info.max:
            return np.dtype(candidate), None
    return np.dtype(np.int64), None


def build_volume(
    sources: list[SliceSource],
    *,
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    headers: Sequence[FileHeader],
    where: str | os.PathLike[str],
    meta: dict[str, Any],
    notes: Sequence[str] = (),
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    strict: bool = False,
    workers: int | None = None,
    resample: str | None = None,
    allocate: Allocator | None = None,
) -> Volume:
    """Plan, check, allocate once, decode in place, wrap as a Volume (for series and multi-frame).

    ``resample="even"`` resamples a tilted or unevenly spaced stack onto an even orthogonal grid
    (see :mod:`medres3d.io.dicom.evengrid`), reported as a ``resampled-even`` warning and
    ``meta["resampled"]``; uneven spacing is then no longer an error under ``strict``.
    ``allocate(shape, dtype)`` gives the slice-major ``(slices, rows, cols)`` buffer to decode into
    (default ``np.empty``): :func:`medres3d.io.dicom.multivolume.load_4d` hands out one channel of
    its 4D array, so each volume is decoded straight into its place, never copied.

    Example:
        >>> vol = build_volume(sources, orientation=iop, pixel_spacing=(0.7, 0.7), headers=headers,
        ...                    where="ct/", meta={})   # doctest: +SKIP
    """
    validate_resample(resample)
    template = headers[0]
    for source in sources:
        if source.slope == 0:  # not "no rescale": every voxel would be the intercept, a blank slice
            raise CorruptFileError(
                source.path,
                f"{source.label} has RescaleSlope=0, which would make every voxel equal RescaleIntercept "
                f"({source.intercept:g}); a slope must be non-zero",
            )
    out_dtype, dtype_note = resolve_dtype(dtype, sources, headers)
    positions = np.asarray([s.position for s in sources], dtype=np.float64)
    labels = [s.label for s in sources]
    plan = plan_stack(positions, orientation, pixel_spacing, labels, where=os.fspath(where))
    if plan.num_slices == 1:
        raise UnsupportedFormatError(
            where, f"all {len(sources)} images are at the same position: a single 2D slice, not a volume"
        )
    corrected = [w for w in plan.warnings if w.startswith(_EVEN_CORRECTS)] if resample == "even" else []
    errors = [e for e in plan.errors if e not in corrected]
    if strict and errors:
        raise SeriesGeometryError(where, "; ".join(errors) + " (strict=True)")
    rows, cols = template.rows, template.columns
    check_voxel_count((1, cols, rows, plan.num_slices), where, max_voxels)

    buffer = (allocate or np.empty)((plan.num_slices, rows, cols), out_dtype)
    duplicates = {dup for dup, _ in plan.duplicates}

    def fill(task: tuple[int, int]) -> None:
        src, k = task
        rescale_into(
            buffer[k], _checked(sources[src], rows, cols), sources[src].slope, sources[src].intercept
        )

    if workers is None and rows * cols <= _SMALL_NATIVE_PIXELS and all(h.is_native for h in headers):
        workers = 1  # a small uncompressed slice is one readinto: a thread hand-off costs more
    _run(fill, [t for t in plan.slices if t[0] not in duplicates], workers)
    warnings = list(notes)
    warnings += _check_duplicates(plan, sources, buffer, rows, cols, strict, where)
    warnings += plan.warnings
    if plan.missing:
        # slice by slice: buffer[kept].min() would copy the whole volume first
        buffer[plan.missing] = min(buffer[k].min() for _, k in plan.slices)
    affine_ras = plan.affine_ras
    resampled = None
    if corrected:
        buffer, affine_ras, resampled, note = _resample_even(
            buffer, plan, positions, orientation, pixel_spacing
        )
        warnings.append(note)
        if out_dtype.kind != "f":
            dtype_note = "native-dtype: the slices were resampled (resample='even'): the values are float32"
    if dtype_note:
        warnings.append(dtype_note)
    if template.photometric == "MONOCHROME1":
        warnings.append(
            "monochrome1: PhotometricInterpretation is MONOCHROME1 (low values display white); the "
            "stored values are kept, not inverted, so that rescaled values keep their physical meaning"
        )
    for message in warnings:
        logger.warning("%s: %s", os.fspath(where), message)

    slopes = [sources[src].slope for src, _ in plan.slices]
    intercepts = [sources[src].intercept for src, _ in plan.slices]
    uniform = len(set(slopes)) == 1 and len(set(intercepts)) == 1
    meta = {
        **meta,
        "rescale": {"slope": slopes[0], "intercept": intercepts[0]}
        if uniform
        else {"slope": slopes, "intercept": intercepts, "per_slice": True},
        "num_slices": len(buffer),
        "missing_slices": plan.missing,
        "warnings": warnings,
    }
    if resampled is not None:
        meta["resampled"] = resampled
    # (k, rows, cols) -> (1, i=cols, j=rows, k): a view, no copy.
    array = buffer.transpose(2, 1, 0)[None]
    return Volume(array, affine_ras, modality=template.modality or None, meta=meta, source=os.fspath(where))


def validate_resample(resample: str | None) -> str | None:
    """Return ``resample`` if it is None or one of :data:`RESAMPLE_CHOICES`, else raise ConfigError."""
    if resample is not None:
        check_choice("resample", resample, RESAMPLE_CHOICES)
    return resample


def _resample_even(
    buffer: np.ndarray,
    plan: StackPlan,
    positions: np.ndarray,
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], str]:
    """The real slices of ``buffer`` on an even orthogonal grid: slices, RAS affine, meta, warning."""
    from medres3d.io.dicom.evengrid import resample_even, tilt_degrees

    ks = [k for _, k in plan.slices]
    real = positions[[src for src, _ in plan.slices]]
    fill = float(min(buffer[k].min() for k in ks))  # as a missing slice is filled
    slices, affine_lps = resample_even(buffer[ks], real, orientation, pixel_spacing, fill=fill)
    spacing = float(np.linalg.norm(affine_lps[:3, 2]))
    tilt = tilt_degrees(real, orientation)
    info = {
        "method": "even",
        "source_slices": len(ks),
        "slices": len(slices),
        "slice_spacing": spacing,
        "tilt_degrees": tilt,
        "source_affine": plan.affine_ras.tolist(),
    }
    note = (
        f"resampled-even: {len(ks)} slices resampled onto an even orthogonal grid of {len(slices)} slices "
        f"{spacing:.3f} mm apart along the slice normal (tilt {tilt:.2f} degrees corrected by shifting each "
        "slice in-plane, spacing by linear interpolation along the normal, as dcm2niix corrects them); "
        f"pixels no slice covers are {fill:g}"
    )
    return slices, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps, info, note


def _checked(source: SliceSource, rows: int, cols: int) -> np.ndarray:
    frame = source.read()
    if frame.shape != (rows, cols):
        raise CorruptFileError(
            source.path, f"{source.label} is {frame.shape[0]}x{frame.shape[1]}, the series is {rows}x{cols}"
        )
    return frame


def _check_duplicates(
    plan: StackPlan,
    sources: list[SliceSource],
    buffer: np.ndarray,
    rows: int,
    cols: int,
    strict: bool,
    where: str | os.PathLike[str],
) -> list[str]:
    grid = dict(plan.slices)
    identical: list[str] = []
    conflicting: list[str] = []
    scratch = np.empty((rows, cols), dtype=buffer.dtype)
    for dup, kept in plan.duplicates:
        rescale_into(scratch, _checked(sources[dup], rows, cols), sources[dup].slope, sources[dup].intercept)
        pair = f"{sources[dup].label} = {sources[kept].label}"
        (identical if np.array_equal(scratch, buffer[grid[kept]]) else conflicting).append(pair)
    warnings = []
    if identical:
        warnings.append(
            f"duplicate-slice: {len(identical)} file(s) repeat another file's position with identical pixels "
            f"and were dropped: {_names(identical)}"
        )
    if conflicting:
        message = (
            f"conflicting-duplicate: {len(conflicting)} file(s) share a position with another file but have "
            f"different pixels; the first file by name was kept: {_names(conflicting)}"
        )
        if strict:
            raise SeriesGeometryError(where, message + " (strict=True)")
        warnings.append(message)
    return warnings


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMED])
    return shown + (f" and {len(items) - _MAX_NAMED} more" if len(items) > _MAX_NAMED else "")


def _run(
    function: Callable[[tuple[int, int]], None], tasks: list[tuple[int, int]], workers: int | None
) -> None:
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1 or None, got {workers}")
    if workers == 1 or len(tasks) < 4:
        for task in tasks:
            function(task)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(function, tasks):
            pass  # iterating re-raises the first error from a worker
