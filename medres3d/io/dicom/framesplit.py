"""The frames of an Enhanced (multi-frame) MR file that holds several volumes (diffusion, fMRI...).

An Enhanced MR file may store a whole 4D acquisition: its frames repeat the slice positions, and
each frame's functional groups say which volume it belongs to: MRDiffusionSequence (b-value and
DiffusionGradientDirectionSequence), MREchoSequence (EffectiveEchoTime), MRImageFrameTypeSequence
(FrameType, ComplexImageComponent: magnitude/phase), FrameContentSequence (TemporalPositionIndex,
DimensionIndexValues). :func:`frame_headers` turns every frame into a :class:`FileHeader` carrying
its own position and values, so that :mod:`medres3d.io.dicom.scan` splits the frames into volumes
by the same rules, and names them the same way, as the files of a single-frame 4D series.

Example:
    >>> from medres3d.io.dicom.header import read_header
    >>> frames, dims = frame_headers(read_header("dwi_enhanced.dcm"))   # doctest: +SKIP
    >>> frames[12].b_value, frames[12].position                        # doctest: +SKIP
    (1000.0, (-12.0, -10.0, 6.0))
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pydicom

from medres3d.io.dicom.multiframe import frame_geometry, geometry_dataset, missing_geometry
from medres3d.io.dicom.types import FileHeader

# DimensionIndexPointers that place a frame within a volume (not which volume it belongs to).
_WITHIN_VOLUME = frozenset({0x00209056, 0x00209057, 0x00200032})  # StackID, InStackPositionNumber, IPP


def frame_headers(header: FileHeader) -> tuple[list[FileHeader], list[tuple[Any, ...]]] | None:
    """One header per frame of an Enhanced file, and each frame's volume-identifying dimension indices.

    Frame ``f``'s header is ``header`` with the frame's position, orientation and pixel spacing,
    its b-value and gradient (scanner frame, LPS), effective echo time, TemporalPositionIndex (as
    ``temporal_position``), FrameType (as ``image_type``, its third value replaced by
    ComplexImageComponent when that is MAGNITUDE/PHASE/REAL/IMAGINARY) and repetition time;
    ``instance_number`` is ``f`` and ``acquisition`` the TemporalPositionIndex (their order).
    Unreadable optional values are None, as in the header scan. The second list holds each frame's
    DimensionIndexValues without the indices that place a frame inside a volume (stack, in-stack
    position), or ``()`` when the file has none.

    Returns:
        None for a file whose frames cannot be placed (no functional groups): its load reports why.

    Raises:
        CorruptFileError, SeriesGeometryError: as :func:`~medres3d.io.dicom.multiframe.frame_geometry`.

    Example:
        >>> frames, _ = frame_headers(read_header("dwi_enhanced.dcm"))   # doctest: +SKIP
    """
    ds = geometry_dataset(header)
    if not header.is_enhanced or missing_geometry(ds, header) is not None:
        return None
    positions, orientation, spacing, _, _ = frame_geometry(header)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    within = [
        n for n, item in enumerate(ds.get("DimensionIndexSequence") or [])
        if _int(item.get("DimensionIndexPointer")) in _WITHIN_VOLUME
    ]  # fmt: skip
    frames, dims = [], []
    for f, position in enumerate(positions):
        groups = (per_frame[f], shared)
        diffusion = _macro(groups, "MRDiffusionSequence")
        content = _macro(groups, "FrameContentSequence")
        frame_type = _macro(groups, "MRImageFrameTypeSequence")
        echo = _macro(groups, "MREchoSequence")
        timing = _macro(groups, "MRTimingAndRelatedParametersSequence")
        temporal = _int(content.get("TemporalPositionIndex")) if content is not None else None
        frames.append(
            replace(
                header,
                position=tuple(position),
                orientation=tuple(orientation),
                pixel_spacing=tuple(spacing),
                b_value=_float(diffusion, "DiffusionBValue"),
                gradient=_gradient(diffusion),
                echo_time=_float(echo, "EffectiveEchoTime"),
                repetition_time=_float(timing, "RepetitionTime") or header.repetition_time,
                temporal_position=temporal,
                image_type=_frame_type(frame_type) or header.image_type,
                instance_number=f,
                acquisition=temporal,
            )
        )
        values = list(content.get("DimensionIndexValues") or []) if content is not None else []
        dims.append(tuple(_int(v) for n, v in enumerate(values) if n not in within))
    return frames, dims


def _macro(groups: tuple[pydicom.Dataset | None, ...], keyword: str) -> pydicom.Dataset | None:
    """A functional group macro's item: the frame's own, else the shared one."""
    for group in groups:
        if group is not None and group.get(keyword):
            return group.get(keyword)[0]
    return None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None  # absent or malformed labels no volume, as in the header scan


def _float(item: pydicom.Dataset | None, keyword: str) -> float | None:
    if item is None:
        return None
    try:
        value = float(item.get(keyword))
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _gradient(diffusion: pydicom.Dataset | None) -> tuple[float, float, float] | None:
    """DiffusionGradientOrientation of a directional frame (its DiffusionGradientDirectionSequence)."""
    if diffusion is None or not diffusion.get("DiffusionGradientDirectionSequence"):
        return None
    try:
        direction = diffusion.DiffusionGradientDirectionSequence[0]
        vector = tuple(float(v) for v in direction.DiffusionGradientOrientation)
    except (AttributeError, TypeError, ValueError):
        return None
    return vector if len(vector) == 3 and all(math.isfinite(v) for v in vector) else None  # type: ignore[return-value]


def _frame_type(item: pydicom.Dataset | None) -> tuple[str, ...]:
    """FrameType, with ComplexImageComponent as its third value when that names the image kind.

    Philips writes FrameType values such as ``M_FFE`` that do not name the kind; the
    ComplexImageComponent of the same macro does.
    """
    if item is None:
        return ()
    values = [str(v).strip().upper() for v in (item.get("FrameType") or [])]
    component = str(item.get("ComplexImageComponent", "") or "").strip().upper()
    if component in ("MAGNITUDE", "PHASE", "REAL", "IMAGINARY"):
        values = [*values, "", "", ""][:3] + values[3:]
        values[2] = component
    return tuple(values)
