"""Multi-frame DICOM files (Enhanced CT/MR, Legacy Converted, RT Dose) to a Volume.

The frames are the slices. Their geometry comes from the functional groups of Enhanced objects
(per-frame ``PlanePositionSequence``, per-frame or shared ``PlaneOrientationSequence`` and
``PixelMeasuresSequence``, per-frame or shared ``PixelValueTransformationSequence`` for the rescale)
or, for RT Dose style files, from ``ImagePositionPatient`` plus ``GridFrameOffsetVector`` (offsets
along the normal, scaled by ``DoseGridScaling``). The frames then go through the same planning and
checks as a series of files (sorted by position, duplicates, missing frames, spacing, tilt).
An Enhanced series written as several files (slabs of frames, or one frame per file; grouped by
:mod:`medres3d.io.dicom.scan`) is stacked the same way, the frames of all its files together.

Example:
    >>> from pydicom.data import get_testdata_file
    >>> from medres3d.io.dicom.header import read_header
    >>> vol = load_multiframe(read_header(get_testdata_file("rtdose.dcm")))
    >>> vol.shape, vol.modality
    ((1, 10, 10, 15), 'RTDOSE')
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException

from medres3d.errors import CorruptFileError, ResourceLimitError, SeriesGeometryError, UnsupportedFormatError
from medres3d.io.dicom.framegroups import (
    IMAGE_ORIENTATION,
    IMAGE_POSITION,
    PIXEL_MEASURES,
    PIXEL_SPACING,
    PIXEL_VALUE_TRANSFORMATION,
    PLANE_ORIENTATION,
    PLANE_POSITION,
    RESCALE_INTERCEPT,
    RESCALE_SLOPE,
    FrameGroups,
    read_frame_groups,
)
from medres3d.io.dicom.geometry import unit_vectors
from medres3d.io.dicom.header import read_dataset_header
from medres3d.io.dicom.pixels import output_rescale, read_frames
from medres3d.io.dicom.stack import Allocator, SliceSource, build_volume, check_image_size, series_meta
from medres3d.io.dicom.types import FileHeader
from medres3d.io.limits import DEFAULT_MAX_VOXELS, check_voxel_count

if TYPE_CHECKING:
    from medres3d.io.volume import Volume

_ORIENTATION_TOL = 1e-3
# What the geometry of a multi-frame file without functional groups needs (RT Dose, no-geometry).
_GEOMETRY_TAGS = ["GridFrameOffsetVector", "DoseGridScaling", "SpacingBetweenSlices", "SliceThickness"]
# positions (one per frame), orientation, pixel spacing, slopes and intercepts (one per frame)
_Geometry = tuple[list[Sequence[float]], Sequence[float], Sequence[float], list[float], list[float]]


def load_multiframe(
    header: FileHeader,
    *,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    strict: bool = False,
    notes: Sequence[str] = (),
    philips_scaling: str = "display",
    resample: str | None = None,
) -> Volume:
    """Load a multi-frame file whose frames are parallel slices; options as ``load_series``.

    Raises:
        UnsupportedFormatError: a single frame.
        SeriesGeometryError: frames in different orientations or with different pixel spacings;
            irregular frames, or no geometry at all (otherwise a ``no-geometry`` warning), when ``strict``.
        CorruptFileError: a header that cannot be parsed, or undecodable pixel data.
        ResourceLimitError: more voxels than ``max_voxels``.
    """
    return load_multiframe_files(
        [header], dtype=dtype, max_voxels=max_voxels, strict=strict, notes=notes,
        philips_scaling=philips_scaling, resample=resample,
    )  # fmt: skip


def load_multiframe_files(
    headers: Sequence[FileHeader],
    *,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    strict: bool = False,
    notes: Sequence[str] = (),
    workers: int | None = None,
    philips_scaling: str = "display",
    resample: str | None = None,
    frames: Sequence[int] | None = None,
    decoded_files: dict[Path, Any] | None = None,
    allocate: Allocator | None = None,
) -> Volume:
    """Stack the frames of one or more multi-frame files of one series (one frame per file included).

    Every frame of every file is placed by its own position and goes through the same planning and
    checks as the files of a single-frame series; all files must share one orientation and pixel
    spacing. Options as ``load_series``; ``workers`` decodes several files in parallel.
    ``frames`` (0-based, one file only) loads only those frames: one volume of an Enhanced 4D file
    (see :mod:`medres3d.io.dicom.framesplit`). ``decoded_files`` shares each file's decoded frames
    between calls (the volumes of one 4D file are then decoded once). ``allocate`` gives the slice
    buffer, as in :func:`~medres3d.io.dicom.stack.build_volume`.

    Raises:
        as :func:`load_multiframe`; SeriesGeometryError also when the files differ in orientation
        or pixel spacing.

    Example:
        >>> from medres3d.io.dicom.scan import find_dicom_series
        >>> vol = load_multiframe_files(find_dicom_series("enhanced_slabs/")[0].headers)  # doctest: +SKIP
    """
    first = headers[0]
    for h in headers:
        check_image_size(h)
    where = (
        first.path if len(headers) == 1 else Path(os.path.commonpath([str(h.path.parent) for h in headers]))
    )
    if frames is not None and len(headers) != 1:
        raise ValueError("frames selects the frames of one file")  # a programming error, not a bad file
    chosen = [list(frames) if frames is not None else list(range(h.frames)) for h in headers]
    total = sum(len(c) for c in chosen)
    check_voxel_count((1, first.columns, first.rows, total), where, max_voxels)
    notes = list(notes)
    geometries = [frame_geometry(h, strict=strict, notes=notes) for h in headers]
    if len(headers) > 1:
        labels = [h.path.name for h in headers]
        _check_same(
            where, [list(g[1]) for g in geometries], "ImageOrientationPatient", _ORIENTATION_TOL, labels
        )
        _check_same(where, [list(g[2]) for g in geometries], "PixelSpacing", 1e-4, labels)
    if total == 1:
        raise UnsupportedFormatError(first.path, "a single-frame image: a 2D slice, not a volume")

    sources = []
    for h, (positions, _, _, slopes, intercepts), indices in zip(headers, geometries, chosen, strict=True):
        if any(not 0 <= f < h.frames for f in indices):
            raise SeriesGeometryError(h.path, f"frames {list(indices)} asked of a file of {h.frames} frames")
        # after the voxel check, once per file (and once per 4D load when decoded_files is shared)
        if decoded_files is None:
            decoded = _DecodedFile(h)
        else:
            decoded = decoded_files.setdefault(h.path, _DecodedFile(h))
        sources += [
            SliceSource(
                h.path,
                f"{h.path.name} frame {f + 1}",
                positions[f],
                *output_rescale(h, slopes[f], intercepts[f], philips_scaling),
                functools.partial(decoded.frame, f),
            )
            for f in indices
        ]
    meta = series_meta(first)
    meta["num_frames"] = total
    if any(h.philips_scale_slope is not None for h in headers):
        meta["philips_scaling"] = philips_scaling
    if len(headers) > 1:
        meta["num_files"] = len(headers)
    return build_volume(
        sources,
        orientation=geometries[0][1],
        pixel_spacing=geometries[0][2],
        headers=headers,
        where=where,
        meta=meta,
        notes=notes,
        dtype=dtype,
        max_voxels=max_voxels,
        strict=strict,
        # one file is decoded once and the per-frame work left is a copy; several decode in parallel
        workers=1 if len(headers) == 1 else workers,
        resample=resample,
        allocate=allocate,
    )


class _DecodedFile:
    """A file's frames, decoded on the first request of any of them (thread-safe, once)."""

    def __init__(self, header: FileHeader) -> None:
        self._header = header
        self._frames: np.ndarray | None = None
        self._lock = threading.Lock()

    def frame(self, index: int) -> np.ndarray:
        with self._lock:
            if self._frames is None:
                self._frames = read_frames(self._header)
        return self._frames[index]


def frame_geometry(header: FileHeader, *, strict: bool = True, notes: list[str] | None = None) -> _Geometry:
    """Per-frame positions, the orientation, the pixel spacing and per-frame rescale of a multi-frame file.

    A file without any geometry (no functional groups, no ImagePositionPatient/Orientation: e.g.
    a classic multi-frame MR export) is an error with ``strict``; otherwise its frames are placed
    in stored order on an identity-like grid (see :func:`_no_geometry`), and a ``no-geometry``
    warning is appended to ``notes``.

    Raises:
        CorruptFileError: the header cannot be parsed.
        SeriesGeometryError: malformed or inconsistent per-frame geometry; no geometry and ``strict``.
    """
    groups = frame_groups(header) if header.is_enhanced else None
    ds = geometry_dataset(header) if groups is None else None
    try:
        missing = missing_geometry(groups if groups is not None else ds, header)  # type: ignore[arg-type]
        if missing is not None:
            if strict:
                raise SeriesGeometryError(
                    header.path, f"{missing}: its frames cannot be placed in space (strict=True)"
                )
            return _no_geometry(ds if ds is not None else geometry_dataset(header), header, missing, notes)
        return _placed_geometry(groups if groups is not None else ds, header)  # type: ignore[arg-type]
    # pydicom converts values on access: a damaged one raises BytesLengthException/NotImplementedError
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, NotImplementedError,
            BytesLengthException) as err:  # fmt: skip
        raise SeriesGeometryError(
            header.path, f"malformed per-frame geometry: {type(err).__name__}: {err}"
        ) from err


def frame_groups(header: FileHeader) -> FrameGroups:
    """The functional groups of an Enhanced file (read once per file version, shared: read-only).

    Raises:
        CorruptFileError: the header cannot be parsed.
        ResourceLimitError: a Deflated header too long to inflate.

    Example:
        >>> frame_groups(read_header("enhanced_mr.dcm")).macro(0, PLANE_POSITION)  # doctest: +SKIP
        {2097202: [-120.0, -95.5, 12.0]}
    """
    try:
        return read_frame_groups(header)
    except ResourceLimitError:
        raise
    except Exception as err:  # pydicom raises several types on a damaged header
        raise CorruptFileError(header.path, f"cannot read the multi-frame header: {err}") from err


def geometry_dataset(header: FileHeader) -> pydicom.Dataset:
    """The dose grid and spacing tags of a multi-frame file without functional groups (RT Dose...).

    Raises:
        CorruptFileError: the header cannot be parsed.
        ResourceLimitError: a Deflated header too long to inflate.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> from medres3d.io.dicom.header import read_header
        >>> len(geometry_dataset(read_header(get_testdata_file("rtdose.dcm"))).GridFrameOffsetVector)
        15
    """
    try:
        return read_dataset_header(header.path, _GEOMETRY_TAGS)
    except ResourceLimitError:
        raise
    except Exception as err:  # pydicom raises several types on a damaged header
        raise CorruptFileError(header.path, f"cannot read the multi-frame header: {err}") from err


def _placed_geometry(source: FrameGroups | pydicom.Dataset, header: FileHeader) -> _Geometry:
    """The frames' geometry, computed once per file version (the volumes of a 4D file share it).

    Walking thousands of per-frame items costs tens of milliseconds; each volume of a 4D file asks
    for it. ``source`` is the file's cached :class:`FrameGroups` (Enhanced), which keeps the result,
    or its dataset; callers only read the lists.
    """
    if not isinstance(source, FrameGroups):
        return _grid_offset_geometry(source, header)
    key = ("geometry", header.frames, header.slope, header.intercept)
    with _GEOMETRY_LOCK:
        found = source.derived.get(key)
    if found is None:
        found = _enhanced_geometry(source, header)
        with _GEOMETRY_LOCK:
            source.derived[key] = found
    return found


_GEOMETRY_LOCK = threading.Lock()


def missing_geometry(source: FrameGroups | pydicom.Dataset, header: FileHeader) -> str | None:
    """What makes a file's frames unplaceable (None when it has geometry to read).

    ``source``: an Enhanced file's :func:`frame_groups`, another file's :func:`geometry_dataset`.
    """
    if isinstance(source, FrameGroups):
        if not source.per_frame and not source.shared.get(PLANE_POSITION):
            return "has no PerFrameFunctionalGroupsSequence (and no shared PlanePositionSequence)"
        return None
    if header.position is None or header.orientation is None:
        return "has no ImagePositionPatient/ImageOrientationPatient and no functional groups"
    if not source.get("GridFrameOffsetVector"):
        return "has ImagePositionPatient but no GridFrameOffsetVector (no functional groups)"
    return None


def _no_geometry(
    ds: pydicom.Dataset, header: FileHeader, missing: str, notes: list[str] | None
) -> _Geometry:
    """Frames in stored order, on LPS axes: spacing from the header where it has one, else 1 mm.

    The affine is then diagonal (RAS: ``diag(-dx, -dy, dz)``, the LPS identity scaled) with the
    origin at 0: the voxels are right, their place in the patient is unknown.
    """
    spacing = header.pixel_spacing or (1.0, 1.0)
    depth, source = unplaced_slice_spacing(ds)
    message = (
        f"no-geometry: {header.path.name} {missing}: its {header.frames} frames are stacked in stored "
        f"order on an identity-like grid (pixel spacing {'x'.join(f'{v:g}' for v in spacing)} mm"
        f"{'' if header.pixel_spacing else ' (assumed)'}, slice spacing {source}, origin 0, LPS axes); "
        "the voxels are right but their position in the patient is unknown (strict=True refuses such files)"
    )
    if notes is not None:
        notes.append(message)
    positions = [[0.0, 0.0, f * depth] for f in range(header.frames)]
    return positions, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), spacing, [header.slope] * header.frames, [
        header.intercept
    ] * header.frames


def unplaced_slice_spacing(ds: pydicom.Dataset) -> tuple[float, str]:
    """The slice spacing of images without positions, and where it came from (for the warning).

    SpacingBetweenSlices, else SliceThickness (contiguous slices), else 1 mm: with no positions,
    the header's stated spacing is the best guess, as dcm2niix makes it.

    Example:
        >>> unplaced_slice_spacing(pydicom.Dataset())
        (1.0, '1 mm (no SpacingBetweenSlices/SliceThickness)')
    """
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value), f"{float(value):g} mm ({keyword})"
    return 1.0, "1 mm (no SpacingBetweenSlices/SliceThickness)"


def _enhanced_geometry(groups: FrameGroups, header: FileHeader) -> _Geometry:
    if len(groups.per_frame) != header.frames:
        raise SeriesGeometryError(
            header.path,
            f"PerFrameFunctionalGroupsSequence has {len(groups.per_frame)} items for "
            f"NumberOfFrames={header.frames}",
        )
    positions, orientations, spacings, slopes, intercepts = [], [], [], [], []
    for f in range(header.frames):
        plane = groups.macro(f, PLANE_POSITION)
        orient = groups.macro(f, PLANE_ORIENTATION)
        measures = groups.macro(f, PIXEL_MEASURES)
        if plane is None or orient is None or measures is None:
            missing = [n for n, m in (("PlanePosition", plane), ("PlaneOrientation", orient),
                                      ("PixelMeasures", measures)) if m is None]  # fmt: skip
            raise SeriesGeometryError(
                header.path, f"frame {f + 1} has no {'/'.join(missing)} functional group: it cannot be placed"
            )
        positions.append(_numbers(plane, IMAGE_POSITION, 3, "ImagePositionPatient", header, f))
        orientations.append(_numbers(orient, IMAGE_ORIENTATION, 6, "ImageOrientationPatient", header, f))
        spacings.append(_numbers(measures, PIXEL_SPACING, 2, "PixelSpacing", header, f))
        rescale = groups.macro(f, PIXEL_VALUE_TRANSFORMATION)
        if rescale is None:
            slopes.append(header.slope)
            intercepts.append(header.intercept)
        else:
            slopes.append(float((rescale.get(RESCALE_SLOPE) or [1.0])[0]))
            intercepts.append(float((rescale.get(RESCALE_INTERCEPT) or [0.0])[0]))
    labels = [f"frame {f + 1}" for f in range(header.frames)]
    _check_same(header.path, orientations, "ImageOrientationPatient", _ORIENTATION_TOL, labels)
    _check_same(header.path, spacings, "PixelSpacing", 1e-4, labels)
    return positions, orientations[0], spacings[0], slopes, intercepts


def _numbers(
    item: dict[int, Any], tag: int, count: int, name: str, header: FileHeader, f: int
) -> list[float]:
    values = [float(v) for v in item.get(tag) or []]
    if len(values) != count:
        raise SeriesGeometryError(
            header.path, f"frame {f + 1}'s {name} has {len(values)} values, not {count}: it cannot be placed"
        )
    return values


def _grid_offset_geometry(ds: pydicom.Dataset, header: FileHeader) -> _Geometry:
    """RT Dose style frames: ImagePositionPatient plus GridFrameOffsetVector along the normal.

    Only called once :func:`missing_geometry` found the position, orientation and offsets present.
    """
    offsets = ds.get("GridFrameOffsetVector")
    if header.position is None or header.orientation is None or not offsets:  # missing_geometry checked
        raise SeriesGeometryError(header.path, "no ImagePositionPatient/ImageOrientationPatient/"
                                               "GridFrameOffsetVector: the frames cannot be placed")
    if header.pixel_spacing is None:
        raise SeriesGeometryError(header.path, "no valid PixelSpacing: the in-plane voxel size is unknown")
    offsets = np.asarray([float(v) for v in offsets], dtype=np.float64)
    if len(offsets) != header.frames:
        raise SeriesGeometryError(
            header.path, f"GridFrameOffsetVector has {len(offsets)} values for NumberOfFrames={header.frames}"
        )
    row, col = unit_vectors(header.orientation, str(header.path))
    normal = np.cross(row, col)
    # PS3.3 C.8.8.3.2: offsets are relative to the first frame when the first is 0; otherwise they
    # are absolute depths along the normal, the first frame being at ImagePositionPatient.
    origin = np.asarray(header.position, dtype=np.float64)
    positions = [list(origin + (d - offsets[0]) * normal) for d in offsets]
    scaling = ds.get("DoseGridScaling")
    slope = float(scaling) if scaling not in (None, "") else header.slope
    return (
        positions,
        header.orientation,
        header.pixel_spacing,
        [slope] * header.frames,
        [header.intercept] * header.frames,
    )


def _check_same(
    where: str | os.PathLike[str], values: list[list[float]], name: str, tol: float, labels: Sequence[str]
) -> None:
    array = np.asarray(values, dtype=np.float64)
    deviation = np.abs(array - array[0]).max(axis=1)
    if deviation.max() > tol:
        other = int(np.argmax(deviation))
        raise SeriesGeometryError(
            where,
            f"frames differ in {name}: {labels[0]} has {values[0]}, {labels[other]} has {values[other]}; "
            "one volume needs one grid",
        )
