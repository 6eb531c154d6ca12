"""Multi-frame DICOM files (Enhanced CT/MR, Legacy Converted, RT Dose) to a Volume.

The frames are the slices. Their geometry comes from the functional groups of Enhanced objects
(per-frame ``PlanePositionSequence``, per-frame or shared ``PlaneOrientationSequence`` and
``PixelMeasuresSequence``, per-frame or shared ``PixelValueTransformationSequence`` for the rescale)
or, for RT Dose style files, from ``ImagePositionPatient`` plus ``GridFrameOffsetVector`` (offsets
along the normal, scaled by ``DoseGridScaling``). The frames then go through the same planning and
checks as a series of files (sorted by position, duplicates, missing frames, spacing, tilt).

Example:
    >>> from pydicom.data import get_testdata_file
    >>> from medres3d.io.dicom_header import read_header
    >>> vol = load_multiframe(read_header(get_testdata_file("rtdose.dcm")))
    >>> vol.shape, vol.modality
    ((1, 10, 10, 15), 'RTDOSE')
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException

from medres3d.errors import CorruptFileError, SeriesGeometryError, UnsupportedFormatError
from medres3d.io.dicom_geometry import unit_vectors
from medres3d.io.dicom_header import FileHeader
from medres3d.io.dicom_pixels import read_frames
from medres3d.io.dicom_series import SliceSource, build_volume, check_image_size, series_meta
from medres3d.io.limits import DEFAULT_MAX_VOXELS, check_voxel_count

if TYPE_CHECKING:
    from medres3d.io.volume import Volume

_ORIENTATION_TOL = 1e-3


def load_multiframe(
    header: FileHeader,
    *,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    strict: bool = False,
    notes: Sequence[str] = (),
) -> Volume:
    """Load a multi-frame file whose frames are parallel slices; options as ``load_series``.

    Raises:
        UnsupportedFormatError: no per-frame geometry, or a single frame.
        SeriesGeometryError: frames in different orientations or with different pixel spacings;
            irregular frames when ``strict``.
        CorruptFileError: a header that cannot be parsed, or undecodable pixel data.
        ResourceLimitError: more voxels than ``max_voxels``.
    """
    check_image_size(header)
    check_voxel_count((1, header.columns, header.rows, header.frames), header.path, max_voxels)
    try:
        ds = pydicom.dcmread(header.path, stop_before_pixels=True)
    except Exception as err:  # pydicom raises several types on a damaged header
        raise CorruptFileError(header.path, f"cannot read the multi-frame header: {err}") from err
    try:
        geometry = _enhanced_geometry(ds, header) if header.is_enhanced else _grid_offset_geometry(ds, header)
    # pydicom converts values on access: a damaged one raises BytesLengthException/NotImplementedError
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, NotImplementedError,
            BytesLengthException) as err:  # fmt: skip
        raise SeriesGeometryError(
            header.path, f"malformed per-frame geometry: {type(err).__name__}: {err}"
        ) from err
    positions, orientation, spacing, slopes, intercepts = geometry
    if header.frames == 1:
        raise UnsupportedFormatError(header.path, "a single-frame image: a 2D slice, not a volume")

    decode_once = functools.cache(lambda: read_frames(header))  # after the voxel check, once

    def frame(index: int) -> np.ndarray:
        return decode_once()[index]

    sources = [
        SliceSource(
            header.path,
            f"{header.path.name} frame {f + 1}",
            positions[f],
            slopes[f],
            intercepts[f],
            functools.partial(frame, f),
        )
        for f in range(header.frames)
    ]
    meta = series_meta(header)
    meta["num_frames"] = header.frames
    return build_volume(
        sources,
        orientation=orientation,
        pixel_spacing=spacing,
        template=header,
        where=header.path,
        meta=meta,
        notes=notes,
        dtype=dtype,
        max_voxels=max_voxels,
        strict=strict,
        workers=1,  # the file is decoded once; the per-frame work left is a copy
    )


_Geometry = tuple[list[Sequence[float]], Sequence[float], Sequence[float], list[float], list[float]]


def _enhanced_geometry(ds: pydicom.Dataset, header: FileHeader) -> _Geometry:
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != header.frames:
        raise SeriesGeometryError(
            header.path,
            f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for NumberOfFrames={header.frames}",
        )

    def macro(frame: int, keyword: str) -> Any:
        for group in (per_frame[frame], shared):
            if group is not None and group.get(keyword):
                return group.get(keyword)[0]
        return None

    positions, orientations, spacings, slopes, intercepts = [], [], [], [], []
    for f in range(header.frames):
        plane = macro(f, "PlanePositionSequence")
        orient = macro(f, "PlaneOrientationSequence")
        measures = macro(f, "PixelMeasuresSequence")
        if plane is None or orient is None or measures is None:
            missing = [n for n, m in (("PlanePosition", plane), ("PlaneOrientation", orient),
                                      ("PixelMeasures", measures)) if m is None]  # fmt: skip
            raise SeriesGeometryError(
                header.path, f"frame {f + 1} has no {'/'.join(missing)} functional group: it cannot be placed"
            )
        positions.append([float(v) for v in plane.ImagePositionPatient])
        orientations.append([float(v) for v in orient.ImageOrientationPatient])
        spacings.append([float(v) for v in measures.PixelSpacing])
        rescale = macro(f, "PixelValueTransformationSequence")
        slopes.append(float(rescale.get("RescaleSlope", 1.0)) if rescale is not None else header.slope)
        intercepts.append(
            float(rescale.get("RescaleIntercept", 0.0)) if rescale is not None else header.intercept
        )
    _check_same(header, orientations, "ImageOrientationPatient", _ORIENTATION_TOL)
    _check_same(header, spacings, "PixelSpacing", 1e-4)
    return positions, orientations[0], spacings[0], slopes, intercepts


def _grid_offset_geometry(ds: pydicom.Dataset, header: FileHeader) -> _Geometry:
    offsets = ds.get("GridFrameOffsetVector")
    if header.position is None or header.orientation is None or not offsets:
        raise UnsupportedFormatError(
            header.path,
            "multi-frame file without per-frame positions (no functional groups, no "
            "ImagePositionPatient + GridFrameOffsetVector): its frames cannot be placed in space",
        )
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


def _check_same(header: FileHeader, values: list[list[float]], name: str, tol: float) -> None:
    array = np.asarray(values, dtype=np.float64)
    deviation = np.abs(array - array[0]).max(axis=1)
    if deviation.max() > tol:
        frame = int(np.argmax(deviation))
        raise SeriesGeometryError(
            header.path,
            f"frames differ in {name}: frame 1 has {values[0]}, frame {frame + 1} has {values[frame]}; "
            "one volume needs one grid",
        )
