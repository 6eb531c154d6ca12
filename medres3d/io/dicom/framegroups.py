"""The functional groups of an Enhanced (multi-frame) file: each frame's geometry and volume values.

An Enhanced MR file of a 4D acquisition holds thousands of frames, each with its own items of
PlanePositionSequence, MRDiffusionSequence, FrameContentSequence... pydicom builds a Dataset per
item and converts every value on access: for 3,600 frames that is about 3 s, ten times what
dcm2niix needs to convert the whole file. Only about twenty values per frame matter here
(:data:`FRAME_SPEC`), so this module walks the bytes of the two functional group sequences and the
DimensionIndexSequence itself (Implicit or Explicit VR Little Endian, the encodings of every
Enhanced file seen in practice), and keeps those values as plain lists. Anything it does not
expect (another encoding, a Deflated dataset, a UN sequence, truncation) goes through pydicom
instead, into the same structure; the tests check that both give the same values.

Each frame's groups are nested dicts keyed by tag, ``{macro: [{leaf: [values...]}, ...]}``: a
macro (a functional group sequence) maps to its items, a leaf to its values (numbers as float or
int, text as str, AT as int tags).

Example:
    >>> from medres3d.io.dicom.header import read_header
    >>> groups = read_frame_groups(read_header("enhanced_mr.dcm"))        # doctest: +SKIP
    >>> groups.macro(0, PLANE_POSITION)[IMAGE_POSITION]                  # doctest: +SKIP
    [-120.0, -95.5, 12.0]
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medres3d.io.dicom.header import read_dataset_header
from medres3d.io.dicom.rawheader import (  # the element layout both byte readers walk
    _ITEM,
    _ITEM_END,
    _LONG_VRS,
    _SEQUENCE_END,
    _TAG,
    _U16,
    _U32,
    _UNDEFINED,
    UnsupportedBytes,
    skip_undefined_sequence,
)
from medres3d.io.dicom.types import FileHeader

# Functional group macros (sequences in a per-frame or the shared item) and the values they hold.
PLANE_POSITION, PLANE_ORIENTATION, PIXEL_MEASURES = 0x00209113, 0x00209116, 0x00289110
PIXEL_VALUE_TRANSFORMATION, FRAME_CONTENT, MR_DIFFUSION = 0x00289145, 0x00209111, 0x00189117
MR_FRAME_TYPE, MR_ECHO, MR_TIMING = 0x00189226, 0x00189114, 0x00189112
IMAGE_POSITION, IMAGE_ORIENTATION, PIXEL_SPACING = 0x00200032, 0x00200037, 0x00280030
RESCALE_INTERCEPT, RESCALE_SLOPE = 0x00281052, 0x00281053
TEMPORAL_POSITION_INDEX, DIMENSION_INDEX_VALUES = 0x00209128, 0x00209157
STACK_ID, IN_STACK_POSITION = 0x00209056, 0x00209057  # as DimensionIndexPointers
B_VALUE, GRADIENT_SEQUENCE, GRADIENT_ORIENTATION = 0x00189087, 0x00189076, 0x00189089
DIFFUSION_DIRECTIONALITY = 0x00189075
FRAME_TYPE, COMPLEX_COMPONENT = 0x00089007, 0x00089208
EFFECTIVE_ECHO_TIME, REPETITION_TIME = 0x00189082, 0x00180080
DIMENSION_INDEX_POINTER = 0x00209165

# tag -> None for a value, or the spec of a sequence's items.
_Spec = Mapping[int, "Mapping[int, Any] | None"]
FRAME_SPEC: _Spec = {
    PLANE_POSITION: {IMAGE_POSITION: None},
    PLANE_ORIENTATION: {IMAGE_ORIENTATION: None},
    PIXEL_MEASURES: {PIXEL_SPACING: None},
    PIXEL_VALUE_TRANSFORMATION: {RESCALE_INTERCEPT: None, RESCALE_SLOPE: None},
    FRAME_CONTENT: {TEMPORAL_POSITION_INDEX: None, DIMENSION_INDEX_VALUES: None},
    MR_DIFFUSION: {
        B_VALUE: None, DIFFUSION_DIRECTIONALITY: None, GRADIENT_SEQUENCE: {GRADIENT_ORIENTATION: None}
    },
    MR_FRAME_TYPE: {FRAME_TYPE: None, COMPLEX_COMPONENT: None},
    MR_ECHO: {EFFECTIVE_ECHO_TIME: None},
    MR_TIMING: {REPETITION_TIME: None},
}
_SHARED, _PER_FRAME, _DIMENSION_INDEX = 0x52009229, 0x52009230, 0x00209222
_TOP_SPEC: _Spec = {
    _SHARED: FRAME_SPEC, _PER_FRAME: FRAME_SPEC, _DIMENSION_INDEX: {DIMENSION_INDEX_POINTER: None}
}

Groups = dict[int, list[dict[int, Any]]]


@dataclass(frozen=True)
class FrameGroups:
    """The functional groups of one file, as read by :func:`read_frame_groups` (read-only).

    Attributes:
        per_frame: one dict of macros per PerFrameFunctionalGroupsSequence item.
        shared: the SharedFunctionalGroupsSequence item's macros (empty when there is none).
        dimension_pointers: the DimensionIndexPointer of each DimensionIndexSequence item (0 when
            an item has none), in the order of every frame's DimensionIndexValues.
        derived: what readers compute from the groups, kept with them so that it lives exactly as
            long as they stay cached (the frames' geometry, which every volume of a 4D file needs).
    """

    per_frame: list[Groups]
    shared: Groups
    dimension_pointers: tuple[int, ...]
    derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def macro(self, frame: int, tag: int) -> dict[int, Any] | None:
        """The first item of macro ``tag`` for ``frame``: the frame's own, else the shared one."""
        for groups in (self.per_frame[frame], self.shared):
            items = groups.get(tag)
            if items:
                return items[0]
        return None


def read_frame_groups(header: FileHeader) -> FrameGroups:
    """The functional groups of a multi-frame file, read once per file version and cached.

    The scan (splitting a 4D file into volumes) and the load of each of its volumes need the same
    values. Callers must not modify the result: it is shared between threads.

    Raises:
        OSError, and pydicom's errors on a header it cannot parse (the caller names the file).
        ResourceLimitError: a Deflated header too long to inflate.

    Example:
        >>> groups = read_frame_groups(read_header("dwi_enhanced.dcm"))   # doctest: +SKIP
        >>> len(groups.per_frame), groups.dimension_pointers                # doctest: +SKIP
        (3600, (2134102, 2134103, 1609863, 1609865))
    """
    info = os.stat(header.path)
    return _cached_groups(str(header.path), info.st_mtime_ns, info.st_size, header.pixel_offset,
                          header.transfer_syntax)  # fmt: skip


def clear_cache() -> None:
    """Forget the files read so far: the next :func:`read_frame_groups` parses its file again.

    For benchmarks that time a first load in a process that has loaded the file before.

    Example:
        >>> clear_cache()
    """
    _cached_groups.cache_clear()


@functools.lru_cache(maxsize=4)
def _cached_groups(path: str, mtime_ns: int, size: int, pixel_offset: int | None, syntax: str) -> FrameGroups:
    del mtime_ns, size  # part of the cache key only: a rewritten file is read again
    found = None
    little_endian = syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian) or UID(syntax).is_encapsulated
    if pixel_offset is not None and little_endian:
        with open(path, "rb") as fp:
            data = fp.read(pixel_offset)
        found = parse_frame_groups(data, implicit=syntax == ImplicitVRLittleEndian)
    if found is None:
        found = frame_groups_from_dataset(read_dataset_header(path, list(_TOP_SPEC)))
    return found


def frame_groups_from_dataset(ds: pydicom.Dataset) -> FrameGroups:
    """The same structure from a pydicom dataset (the path for what :func:`parse_frame_groups` refuses).

    Example:
        >>> frame_groups_from_dataset(pydicom.Dataset()).dimension_pointers
        ()
    """
    top = _from_dataset(ds, _TOP_SPEC)
    return _assemble(top)


def parse_frame_groups(data: bytes, *, implicit: bool) -> FrameGroups | None:
    """The functional groups from a Part 10 file's bytes up to its pixel data, or None (use pydicom).

    ``data`` starts at the file's preamble; the dataset is Implicit (``implicit``) or Explicit VR
    Little Endian.

    Example:
        >>> parse_frame_groups(b"not dicom", implicit=False) is None
        True
    """
    if data[128:132] != b"DICM":
        return None
    try:
        pos = 132
        while pos + 8 <= len(data) and _TAG.unpack_from(data, pos)[0] == 0x0002:
            pos = _skip_explicit(data, pos)  # the file meta is always explicit VR little endian
        top, _ = _elements(data, pos, len(data), implicit, _TOP_SPEC, 0)
    except (UnsupportedBytes, struct.error, UnicodeDecodeError, IndexError):
        return None
    return _assemble(top)


def _assemble(top: dict[int, Any]) -> FrameGroups:
    shared = top.get(_SHARED) or [{}]
    pointers = tuple(
        (item.get(DIMENSION_INDEX_POINTER) or [0])[0] for item in top.get(_DIMENSION_INDEX) or []
    )
    per_frame = list(top.get(_PER_FRAME) or [])
    return FrameGroups(per_frame=per_frame, shared=shared[0], dimension_pointers=pointers)


_MAX_DEPTH = 12
# Binary VRs: struct code and value size; decoded with one struct per (VR, count), cached.
_BINARY = {b"FD": ("d", 8), b"FL": ("f", 4), b"UL": ("I", 4), b"US": ("H", 2), b"SL": ("i", 4),
           b"SS": ("h", 2), b"AT": ("HH", 4)}  # fmt: skip
_TEXT_NUMBERS = frozenset({b"DS", b"IS"})


@functools.cache
def _vr(tag: int) -> bytes:
    """The dictionary VR of a tag (Implicit VR files, and UN elements), as the bytes explicit VR has."""
    return dictionary_VR(tag).encode("ascii")


@functools.cache
def _binary_struct(vr: bytes, count: int) -> struct.Struct:
    return struct.Struct("<" + _BINARY[vr][0] * count)


def _skip_explicit(data: bytes, pos: int) -> int:
    if data[pos + 4 : pos + 6] in _LONG_VRS:
        return pos + 12 + _U32.unpack_from(data, pos + 8)[0]
    return pos + 8 + _U16.unpack_from(data, pos + 6)[0]


def _elements(
    data: bytes, pos: int, end: int | None, implicit: bool, spec: _Spec, depth: int
) -> tuple[dict[int, Any], int]:
    """The wanted elements from ``pos`` up to ``end`` (None: up to an item delimiter); the new position.

    The caller's ``end`` is the end of the data at top level, where the walk also stops (at the
    pixel data, which is where ``data`` ends).
    """
    if depth > _MAX_DEPTH:
        raise UnsupportedBytes("sequences nested too deep")
    out: dict[int, Any] = {}
    unpack_tag, unpack_u32, unpack_u16 = _TAG.unpack_from, _U32.unpack_from, _U16.unpack_from
    limit = len(data) if end is None else end
    while pos < limit:
        if pos + 8 > limit:
            raise UnsupportedBytes("truncated element")
        group, elem = unpack_tag(data, pos)
        tag = group << 16 | elem
        if tag == _ITEM_END:
            if end is not None:
                raise UnsupportedBytes("item delimiter in an item of defined length")
            return out, pos + 8
        vr = b""
        if implicit or group == 0xFFFE:
            length, start = unpack_u32(data, pos + 4)[0], pos + 8
        else:
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                length, start = unpack_u32(data, pos + 8)[0], pos + 12
            else:
                length, start = unpack_u16(data, pos + 6)[0], pos + 8
        wanted = spec.get(tag, False)
        if length == _UNDEFINED:
            if vr == b"UN":
                raise UnsupportedBytes("a UN element of undefined length (implicit VR inside)")
            if wanted:
                out[tag], pos = _sequence(data, start, None, implicit, wanted, depth + 1)
            else:
                pos = skip_undefined_sequence(data, start, implicit)
            continue
        stop = start + length
        if stop > limit:
            raise UnsupportedBytes("a value beyond its item or the header")
        if wanted:  # a sequence of defined length
            if vr not in (b"", b"SQ"):
                raise UnsupportedBytes(f"sequence {tag:08X} stored as {vr!r}")
            out[tag], _ = _sequence(data, start, stop, implicit, wanted, depth + 1)
        elif wanted is None:
            out[tag] = _decode(data[start:stop], vr if vr not in (b"", b"UN") else _vr(tag))
        pos = stop
    if end is None:
        raise UnsupportedBytes("an item of undefined length that does not end")
    return out, pos


def _sequence(
    data: bytes, pos: int, end: int | None, implicit: bool, spec: _Spec, depth: int
) -> tuple[list[dict[int, Any]], int]:
    """The items of a sequence from ``pos`` (``end`` None: undefined length); the position after it."""
    items: list[dict[int, Any]] = []
    while end is None or pos < end:
        if pos + 8 > len(data):
            raise UnsupportedBytes("truncated sequence")
        group, elem = _TAG.unpack_from(data, pos)
        tag, length = group << 16 | elem, _U32.unpack_from(data, pos + 4)[0]
        pos += 8
        if tag == _SEQUENCE_END and end is None:
            return items, pos
        if tag != _ITEM:
            raise UnsupportedBytes(f"unexpected tag {tag:08X} in a sequence")
        if length == _UNDEFINED:
            item, pos = _elements(data, pos, None, implicit, spec, depth)
        else:
            if (end is not None and pos + length > end) or pos + length > len(data):
                raise UnsupportedBytes("an item beyond its sequence")
            item, pos = _elements(data, pos, pos + length, implicit, spec, depth)
        if spec:
            items.append(item)
    return items, pos


def _decode(raw: bytes, vr: bytes) -> list[Any]:
    binary = _BINARY.get(vr)
    if binary is not None:
        values = _binary_struct(vr, len(raw) // binary[1]).unpack_from(raw)
        if vr == b"AT":
            return [values[n] << 16 | values[n + 1] for n in range(0, len(values), 2)]
        return list(values)  # FD and FL unpack as float, the others as int
    text = raw.decode("ascii")
    if vr in _TEXT_NUMBERS:
        try:
            return [float(part) for part in text.split("\\")]  # float() ignores the space padding
        except ValueError:
            pass
    parts = [part.strip(" \x00") for part in text.split("\\")]
    if parts == [""]:
        return []
    return [_number(part) for part in parts] if vr in _TEXT_NUMBERS else parts


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # the caller's float() names it as malformed, as for pydicom's values


def _from_dataset(ds: pydicom.Dataset, spec: _Spec) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for tag, sub in spec.items():
        if tag not in ds:
            continue
        value = ds[tag].value
        if sub is not None:
            out[tag] = [_from_dataset(item, sub) for item in (value or [])]
        elif value is None or value == "":
            out[tag] = []
        else:
            values = list(value) if isinstance(value, pydicom.multival.MultiValue | list) else [value]
            out[tag] = [_plain(v) for v in values]
    return out


def _plain(value: Any) -> Any:
    """pydicom's value as the byte reader gives it: DS and IS as float, binary numbers and AT as int."""
    if isinstance(value, float | pydicom.valuerep.IS):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value)
