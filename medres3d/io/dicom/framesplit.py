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
from typing import Any

from medres3d.io.dicom.framegroups import (
    B_VALUE,
    COMPLEX_COMPONENT,
    DIFFUSION_DIRECTIONALITY,
    DIMENSION_INDEX_VALUES,
    EFFECTIVE_ECHO_TIME,
    FRAME_CONTENT,
    FRAME_TYPE,
    GRADIENT_ORIENTATION,
    GRADIENT_SEQUENCE,
    IMAGE_POSITION,
    IN_STACK_POSITION,
    MR_DIFFUSION,
    MR_ECHO,
    MR_FRAME_TYPE,
    MR_TIMING,
    REPETITION_TIME,
    STACK_ID,
    TEMPORAL_POSITION_INDEX,
)
from medres3d.io.dicom.multiframe import frame_geometry, frame_groups, missing_geometry
from medres3d.io.dicom.types import FileHeader

# DimensionIndexPointers that place a frame within a volume (not which volume it belongs to).
_WITHIN_VOLUME = frozenset({STACK_ID, IN_STACK_POSITION, IMAGE_POSITION})


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
    if not header.is_enhanced:
        return None
    groups = frame_groups(header)
    if missing_geometry(groups, header) is not None:
        return None
    positions, orientation, spacing, _, _ = frame_geometry(header)
    within = {n for n, pointer in enumerate(groups.dimension_pointers) if pointer in _WITHIN_VOLUME}
    orientation, spacing = tuple(orientation), tuple(spacing)
    frames, dims = [], []
    for f, position in enumerate(positions):
        diffusion = groups.macro(f, MR_DIFFUSION)
        content = groups.macro(f, FRAME_CONTENT)
        echo = groups.macro(f, MR_ECHO)
        timing = groups.macro(f, MR_TIMING)
        temporal = _int(content, TEMPORAL_POSITION_INDEX)
        frames.append(
            header.with_values(
                position=tuple(position),
                orientation=orientation,
                pixel_spacing=spacing,
                b_value=_float(diffusion, B_VALUE),
                gradient=_gradient(diffusion),
                echo_time=_float(echo, EFFECTIVE_ECHO_TIME),
                repetition_time=_float(timing, REPETITION_TIME) or header.repetition_time,
                temporal_position=temporal,
                image_type=_frame_type(groups.macro(f, MR_FRAME_TYPE)) or header.image_type,
                instance_number=f,
                acquisition=temporal,
            )
        )
        values = (content or {}).get(DIMENSION_INDEX_VALUES) or []
        dims.append(tuple(_to_int(v) for n, v in enumerate(values) if n not in within))
    return frames, dims


def _first(item: dict[int, Any] | None, tag: int) -> Any:
    values = item.get(tag) if item is not None else None
    return values[0] if values else None


def _to_int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None  # absent or malformed labels no volume, as in the header scan


def _int(item: dict[int, Any] | None, tag: int) -> int | None:
    return _to_int(_first(item, tag))


def _float(item: dict[int, Any] | None, tag: int) -> float | None:
    try:
        value = float(_first(item, tag))
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _gradient(diffusion: dict[int, Any] | None) -> tuple[float, float, float] | None:
    """DiffusionGradientOrientation of a directional frame (its DiffusionGradientDirectionSequence).

    An ISOTROPIC frame (a derived trace image) has none: it gets the zero vector, as Philips'
    single-frame trace images carry, so that both are one kind of volume.
    """
    direction = _first(diffusion, GRADIENT_SEQUENCE)
    if direction is None:
        isotropic = str(_first(diffusion, DIFFUSION_DIRECTIONALITY) or "").strip().upper() == "ISOTROPIC"
        return (0.0, 0.0, 0.0) if isotropic else None
    try:
        vector = tuple(float(v) for v in direction.get(GRADIENT_ORIENTATION) or [])
    except (TypeError, ValueError):
        return None
    return vector if len(vector) == 3 and all(math.isfinite(v) for v in vector) else None  # type: ignore[return-value]


def _frame_type(item: dict[int, Any] | None) -> tuple[str, ...]:
    """FrameType, with ComplexImageComponent as its third value when that names the image kind.

    Philips writes FrameType values such as ``M_FFE`` that do not name the kind; the
    ComplexImageComponent of the same macro does.
    """
    if item is None:
        return ()
    values = [str(v).strip().upper() for v in (item.get(FRAME_TYPE) or [])]
    component = str(_first(item, COMPLEX_COMPONENT) or "").strip().upper()
    if component in ("MAGNITUDE", "PHASE", "REAL", "IMAGINARY"):
        values = [*values, "", "", ""][:3] + values[3:]
        values[2] = component
    return tuple(values)
