"""The volumes of one 4D series (diffusion, fMRI, multi-echo, magnitude and phase) as one Volume.

A scan lists each 3D volume of such a series as its own :class:`~medres3d.io.dicom.series.DicomSeries`
part (see :mod:`medres3d.io.dicom.scan`); :func:`load_4d` loads the parts one by one into one
array, ``(C, H, W, D)`` with one channel per volume, in acquisition order. Every part must lie on
the grid of the first (same shape, affine within 1e-3 mm); ``meta`` lists, per volume, the values
that tell the volumes apart.

Example:
    >>> from medres3d.io.dicom import load_dicom_series
    >>> dwi = load_dicom_series("dwi/", as_4d=True)   # doctest: +SKIP
    >>> dwi.shape, dwi.meta["b_values"]               # doctest: +SKIP
    ((4, 96, 96, 40), [0.0, 1000.0, 1000.0, 1000.0])
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from medres3d.errors import SeriesGeometryError
from medres3d.io.dicom.mosaic import volume_values
from medres3d.io.dicom.series import DicomSeries
from medres3d.io.dicom.types import FileHeader
from medres3d.io.limits import DEFAULT_MAX_VOXELS, check_voxel_count
from medres3d.io.volume import Volume

logger = logging.getLogger("medres3d.io.dicom")

# Volumes whose affines differ by more than this (mm, per matrix entry) are not on one grid.
_GRID_TOL = 1e-3


def load_4d(
    parts: Sequence[DicomSeries],
    *,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    strict: bool = False,
    philips_scaling: str = "display",
    resample: str | None = None,
) -> Volume:
    """Stack the 3D volumes ``parts`` of one series along the channel axis.

    Args:
        parts: the image parts of one SeriesInstanceUID (from :func:`~medres3d.io.dicom.find_dicom_series`).
        dtype, max_voxels, strict, philips_scaling, resample: as
            :func:`medres3d.io.dicom.load_dicom_series`, applied to every volume; ``max_voxels``
            bounds the whole 4D array, checked from the headers before any pixel is read.

    Returns:
        A Volume with one channel per part. ``meta["volumes"]`` has one dict per channel (``key``,
        ``b_value``, ``gradient_lps``, ``echo_time``, ``repetition_time``, ``image_kind``...);
        ``meta["b_values"]``, ``meta["b_vectors_lps"]`` (the scanner frame, DICOM LPS),
        ``meta["b_vectors_ras"]`` and ``meta["b_vectors_image"]`` (along the voxel axes i, j, k of
        the returned array), ``meta["echo_times"]`` and ``meta["repetition_time"]`` summarize them.

    Raises:
        SeriesGeometryError: parts on different grids (the message names both and says how to load
            them one by one).
        As the 3D loaders otherwise.

    Example:
        >>> vol = load_4d([s for s in find_dicom_series("dwi/") if not s.is_localizer])  # doctest: +SKIP
    """
    ordered = sorted(parts, key=lambda s: (min(_order(h) for h in s.headers), _frame_order(s)))
    ordered, excluded = _without_isotropic(ordered)
    claimed = sum(s.rows * s.columns * max(1, s.num_frames) for s in ordered)
    check_voxel_count((1, claimed, 1, 1), ordered[0].folder, max_voxels)
    options: dict[str, Any] = {"dtype": dtype, "max_voxels": max_voxels, "strict": strict,
                               "philips_scaling": philips_scaling, "resample": resample}  # fmt: skip
    if any(p.frames for p in ordered):
        # the volumes of an Enhanced 4D file: the file is decoded once for all of them
        options["decoded_files"] = {}
    if resample is None and all(_stacks_in_place(p) for p in ordered):
        return _load_in_place(ordered, options, excluded)
    first = ordered[0].load(**options)
    array = np.empty((len(ordered), *first.spatial_shape), dtype=first.array.dtype)
    array[0] = first.array[0]
    warnings = [f"[{ordered[0].part or ordered[0].key}] {w}" for w in first.warnings]
    for n, part in enumerate(ordered[1:], start=1):
        volume = part.load(**options)
        _check_grid(part, volume, ordered[0], first)
        if volume.array.dtype != array.dtype:  # "native" may pick different integer types per part
            array = array.astype(np.result_type(array.dtype, volume.array.dtype))
        array[n] = volume.array[0]
        warnings += [f"[{part.part or part.key}] {w}" for w in volume.warnings]
    return _finish(ordered, first, array, warnings + excluded)


def _without_isotropic(parts: list[DicomSeries]) -> tuple[list[DicomSeries], list[str]]:
    """The parts without derived isotropic diffusion images, and the warning that names those left out.

    A b > 0 image with a zero gradient (Philips' trace image, stored in its DWI series) is not an
    acquired direction: in the 4D stack its zero b-vector would break a tensor or model fit, so it
    is left out, as dcm2niix leaves it out of its DWI file, and named (it loads on its own by key).
    """
    isotropic = [p for p in parts if p.headers[0].is_isotropic_diffusion]
    if not isotropic or len(isotropic) == len(parts):
        return parts, []
    keys = ", ".join(p.part or p.key for p in isotropic)
    return [p for p in parts if p not in isotropic], [
        f"isotropic-excluded: {len(isotropic)} volume(s) ({keys}) are b > 0 images without a gradient "
        "direction (a derived isotropic/trace image, as Philips stores it): left out of the 4D stack, "
        "as dcm2niix leaves them out, since a zero b-vector at b > 0 breaks a tensor fit; load one "
        "with series_uid=<key>"
    ]


def _stacks_in_place(part: DicomSeries) -> bool:
    """A part whose loader decodes into a given buffer: placed single-frame files, frames of
    multi-frame files, or one Siemens mosaic."""
    return all(h.is_multiframe or h.is_mosaic or h.position is not None for h in part.headers)


def _load_in_place(ordered: Sequence[DicomSeries], options: dict[str, Any], excluded: list[str]) -> Volume:
    """Parts decoded straight into one slice-major ``(C, slices, rows, cols)`` buffer.

    Each part is still planned and checked as a 3D series, but its slices land in their channel of
    the 4D buffer (through ``allocate``) and the result is a transposed view: no per-volume copy,
    which cost as much as the decoding (a strided transpose of every voxel).
    """
    buffer: np.ndarray | None = None

    def slot(n: int) -> Any:
        def allocate(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
            nonlocal buffer
            if buffer is None:
                buffer = np.empty((len(ordered), *shape), dtype=dtype)
            if buffer.shape[1:] == tuple(shape) and buffer.dtype == dtype:
                return buffer[n]
            return np.empty(shape, dtype=dtype)  # another grid (refused below) or "native" dtype
        return allocate

    first = ordered[0].load(**options, allocate=slot(0))
    warnings = [f"[{ordered[0].part or ordered[0].key}] {w}" for w in first.warnings]
    for n, part in enumerate(ordered[1:], start=1):
        volume = part.load(**options, allocate=slot(n))
        _check_grid(part, volume, ordered[0], first)
        # the first part's load allocated the buffer
        if not np.shares_memory(volume.array, buffer):  # "native" chose a wider integer type here
            buffer = buffer.astype(np.result_type(buffer.dtype, volume.array.dtype))
            buffer[n] = volume.array[0].transpose(2, 1, 0)
        warnings += [f"[{part.part or part.key}] {w}" for w in volume.warnings]
    # (C, k, rows, cols) -> (C, i=cols, j=rows, k): a view, as a 3D volume's array is
    return _finish(ordered, first, buffer.transpose(0, 3, 2, 1), warnings + excluded)


def _check_grid(part: DicomSeries, volume: Volume, first_part: DicomSeries, first: Volume) -> None:
    same = volume.spatial_shape == first.spatial_shape
    if not same or not np.allclose(volume.affine, first.affine, atol=_GRID_TOL):
        raise SeriesGeometryError(
            part.folder,
            f"volume {part.key} ({volume.spatial_shape}) is not on the grid of {first_part.key} "
            f"({first.spatial_shape}): a missing slice at an end, or another orientation; load the "
            "volumes one by one with series_uid=<key>",
        )


def _finish(ordered: Sequence[DicomSeries], first: Volume, array: np.ndarray, warnings: list[str]) -> Volume:
    warnings += _conflicts(ordered)
    for message in warnings[len(first.warnings) :]:
        logger.warning("%s: %s", ordered[0].folder, message)
    meta = {**first.meta, **_summary(ordered, first.affine), "warnings": warnings}
    for single in ("b_value", "gradient_lps"):  # a mosaic's own values; per volume in meta["volumes"]
        meta.pop(single, None)
    source = os.fspath(ordered[0].folder)
    return Volume(array, first.affine, modality=first.modality, meta=meta, source=source)


def _frame_order(part: DicomSeries) -> tuple[Any, ...]:
    """The volumes of one Enhanced 4D file (one header each) in TemporalPositionIndex, then frame order."""
    if not part.frames:
        return ()
    temporal = part.headers[0].temporal_position
    return (temporal if temporal is not None else math.inf, part.frames[0])


def _order(h: FileHeader) -> tuple[Any, ...]:
    return (
        h.acquisition_time or "~",
        h.acquisition if h.acquisition is not None else math.inf,
        h.instance_number if h.instance_number is not None else math.inf,
        str(h.path),
    )


def _summary(parts: Sequence[DicomSeries], affine: np.ndarray) -> dict[str, Any]:
    volumes = [{"key": p.key, "part": p.part, **volume_values(p.headers[0])} for p in parts]
    summary: dict[str, Any] = {"num_volumes": len(parts), "volumes": volumes}
    if any(v["b_value"] is not None for v in volumes):
        lps = np.asarray([v["gradient_lps"] or (0.0, 0.0, 0.0) for v in volumes], dtype=np.float64)
        ras = lps * np.array([-1.0, -1.0, 1.0])
        # the voxel axes' unit vectors in RAS: their (orthonormal, up to a shear) inverse maps world to image
        axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        image = ras @ np.linalg.inv(axes).T
        summary.update(
            b_values=[v["b_value"] for v in volumes],
            b_vectors_lps=lps.round(6).tolist(),
            b_vectors_ras=ras.round(6).tolist(),
            b_vectors_image=image.round(6).tolist(),
        )
    echo_times = [v["echo_time"] for v in volumes]
    if any(t is not None for t in echo_times):
        summary["echo_times"] = echo_times
    repetition = {v["repetition_time"] for v in volumes} - {None}
    if repetition:
        summary["repetition_time"] = repetition.pop() if len(repetition) == 1 else sorted(repetition)
    return summary


def _conflicts(parts: Sequence[DicomSeries]) -> list[str]:
    """Files of one volume that disagree on its b-value or direction (the first file's are used)."""
    out = []
    for part in parts:
        values = {(h.b_value, h.gradient) for h in part.headers}
        if len(values) > 1:
            odd = next(h for h in part.headers if (h.b_value, h.gradient) != (part.headers[0].b_value,
                                                                              part.headers[0].gradient))
            out.append(
                f"conflicting-diffusion: the {len(part.headers)} files of volume {part.key} carry "
                f"{len(values)} different b-value/direction pairs (e.g. {odd.path.name}: b={odd.b_value}, "
                f"{odd.gradient}); meta lists those of {part.headers[0].path.name}"
            )
    return out
