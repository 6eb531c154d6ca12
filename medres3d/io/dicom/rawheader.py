"""A fast reader for the common case of a DICOM header: Part 10 file, little-endian dataset.

Scanning a tree of thousands of files spends its time in pydicom's general-purpose parser
(element objects, value conversion, validation) for the ~30 tags a scan needs. This module walks
the element headers itself, seeks over every value it does not want, keeps the wanted ones as
plain ``str``/``list[str]``/``int`` values, and stops at the pixel data element, whose file offset
it returns. It covers files with the "DICM" prefix whose dataset is Implicit or Explicit VR Little
Endian (which includes every compressed transfer syntax). Anything else, or anything unexpected
(non-ASCII or ISO 2022 text, UN of undefined length, truncation, no pixel data...), returns None
and the caller uses pydicom; the tests check that both paths give the same headers.

Example:
    >>> from pydicom.data import get_testdata_file
    >>> table = tag_table(["Rows", "Modality"])
    >>> with open(get_testdata_file("CT_small.dcm"), "rb") as fp:
    ...     values, offset = parse_header(fp, table)
    >>> values["Rows"], values["Modality"], offset
    (128, 'CT', 6288)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# Explicit VRs with a reserved field and a 32-bit length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_MAX_DEPTH = 16
_CHUNK = 16384
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")
# Binary float VRs (diffusion b-values and gradients): struct code and size.
_BINARY_FLOATS = {"FD": ("d", 8), "FL": ("f", 4)}


class UnsupportedBytes(Exception):
    """Bytes these readers do not handle (or damaged ones): the caller uses pydicom's parser."""


class TruncatedBytes(UnsupportedBytes):
    """The bytes end before the structure does: more of the file is needed."""


def tag_table(keywords: Iterable[str]) -> dict[int, tuple[str, bool | str]]:
    """``tag -> (keyword, kind)`` for the keywords, from pydicom's data dictionary.

    ``kind`` is True for US (one unsigned short), ``"FD"``/``"FL"`` for binary doubles/floats
    (returned as a list of floats), False for text.
    """
    table: dict[int, tuple[str, bool | str]] = {}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(f"unknown DICOM keyword {keyword!r}")
        vr = dictionary_VR(tag)
        table[tag] = (keyword, True if vr == "US" else vr if vr in ("FD", "FL") else False)
    return table


def parse_header(
    fp: BinaryIO, wanted: Mapping[int, tuple[str, bool | str]]
) -> tuple[dict[str, Any], int] | None:
    """Values of the ``wanted`` tags and the offset of the pixel data element, or None (use pydicom).

    ``fp`` is an open binary file; the result also holds "TransferSyntaxUID" and, when the
    dataset has none, "SOPClassUID" from the file meta's MediaStorageSOPClassUID.
    """
    try:
        return _parse(_Buffer(fp), wanted)
    except (UnsupportedBytes, struct.error, UnicodeDecodeError):
        return None


class _Buffer:
    """Random access to the file through one refillable chunk."""

    def __init__(self, fp: BinaryIO) -> None:
        self.fp = fp
        self.start = 0
        self.data = b""

    def get(self, pos: int, size: int) -> bytes:
        end = pos + size
        if pos < self.start or end > self.start + len(self.data):
            self.fp.seek(pos)
            self.start, self.data = pos, self.fp.read(max(size, _CHUNK))
        chunk = self.data[pos - self.start : end - self.start]
        if len(chunk) != size:
            raise UnsupportedBytes("end of file")
        return chunk

    def upto(self, pos: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``pos`` (fewer at the end of the file)."""
        if self.start <= pos and pos + size <= self.start + len(self.data):
            return self.data[pos - self.start : pos - self.start + size]
        self.fp.seek(pos)
        self.start, self.data = pos, self.fp.read(size)
        return self.data


def _parse(buf: _Buffer, wanted: Mapping[int, tuple[str, bool | str]]) -> tuple[dict[str, Any], int]:
    if buf.get(128, 4) != b"DICM":
        raise UnsupportedBytes("no DICM prefix")
    meta: dict[str, Any] = {}
    pos = 132
    meta_table = {0x00020002: ("MediaStorageSOPClassUID", False), 0x00020010: ("TransferSyntaxUID", False)}
    while _TAG.unpack(buf.get(pos, 4))[0] == 0x0002:  # file meta: always explicit VR little endian
        pos = _element(buf, pos, False, meta_table, meta)
    syntax = UID(str(meta.get("TransferSyntaxUID", "")))
    if not syntax.is_transfer_syntax or (
        syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) and not syntax.is_encapsulated
    ):
        raise UnsupportedBytes(f"dataset encoding of {syntax}")
    implicit = syntax == ImplicitVRLittleEndian
    values: dict[str, Any] = {"TransferSyntaxUID": str(syntax)}
    pos = _dataset(buf, pos, implicit, wanted, values)
    if not values.get("SOPClassUID"):
        values["SOPClassUID"] = meta.get("MediaStorageSOPClassUID", "")
    return values, pos


def _dataset(
    buf: _Buffer, pos: int, implicit: bool, wanted: Mapping[int, tuple[str, bool | str]], out: dict
) -> int:
    """Walk the top-level elements up to the pixel data; return its offset.

    The hot loop of a scan: elements whose header and value lie in the buffered chunk are parsed
    inline; the rest (values beyond the chunk, undefined lengths) go through :func:`_element`.
    """
    unpack_tag, unpack_u16, unpack_u32 = _TAG.unpack_from, _U16.unpack_from, _U32.unpack_from
    while True:
        buf.get(pos, 12 if pos + 12 <= buf.start + len(buf.data) else 8)  # make the header resident
        data, off = buf.data, pos - buf.start
        group, elem = unpack_tag(data, off)
        tag = group << 16 | elem
        if tag in _PIXEL_TAGS:
            return pos
        if implicit:
            length, start = unpack_u32(data, off + 4)[0], off + 8
        elif data[off + 4 : off + 6] in _LONG_VRS:
            if off + 12 > len(data) or data[off + 4 : off + 6] == b"UN":
                pos = _element(buf, pos, implicit, wanted, out)
                continue
            length, start = unpack_u32(data, off + 8)[0], off + 12
        else:
            length, start = unpack_u16(data, off + 6)[0], off + 8
        if length == _UNDEFINED or (tag in wanted and start + length > len(data)):
            pos = _element(buf, pos, implicit, wanted, out)
            continue
        if tag in wanted:
            keyword, kind = wanted[tag]
            out[keyword] = _value(data[start : start + length], kind)
        pos += start - off + length


def _element(
    buf: _Buffer,
    pos: int,
    implicit: bool,
    wanted: Mapping[int, tuple[str, bool | str]],
    out: dict[str, Any],
) -> int:
    """Read (if wanted) or skip the element at ``pos``; return the position after it."""
    head = buf.get(pos, 8)
    group, elem = _TAG.unpack_from(head)
    tag = group << 16 | elem
    vr = b""
    if implicit or group == 0xFFFE:
        length, start = _U32.unpack_from(head, 4)[0], pos + 8
    else:
        vr = head[4:6]
        if vr in _LONG_VRS:
            length, start = _U32.unpack(buf.get(pos + 8, 4))[0], pos + 12
        else:
            length, start = _U16.unpack_from(head, 6)[0], pos + 8
    if length == _UNDEFINED:
        if vr == b"UN":
            raise UnsupportedBytes("UN of undefined length")
        return _skip_sequence(buf, start, implicit)
    if tag in wanted:
        keyword, kind = wanted[tag]
        out[keyword] = _value(buf.get(start, length), kind)
    return start + length


def _skip_sequence(buf: _Buffer, pos: int, implicit: bool) -> int:
    """Skip the undefined-length sequence whose items start at ``pos``; return its end.

    The sequence is walked in memory (:func:`skip_undefined_sequence`), on more of the file each
    time it turns out longer than what was read (most are short; Philips' per-frame groups are
    megabytes).
    """
    size = _CHUNK
    while True:
        data = buf.upto(pos, size)
        try:
            return pos + skip_undefined_sequence(data, 0, implicit)
        except TruncatedBytes:
            if len(data) < size:
                raise UnsupportedBytes("end of file inside a sequence") from None
            size *= 8


def skip_undefined_sequence(data: bytes, pos: int, implicit: bool) -> int:
    """The position in ``data`` after the undefined-length sequence whose items start at ``pos``.

    Nothing is decoded: a flat loop over the element headers with a stack of what it is in (a
    sequence, where only items and the sequence delimiter may come, or an item of undefined
    length, up to its delimiter). Items of defined length and values are jumped over whole.

    Raises:
        TruncatedBytes: ``data`` ends first.
        UnsupportedBytes: anything else than that structure, a UN of undefined length, or
            sequences nested more than 16 deep.

    Example:
        >>> skip_undefined_sequence(b"\\xfe\\xff\\xdd\\xe0\\0\\0\\0\\0", 0, False)
        8
    """
    unpack_tag, unpack_u32, unpack_u16 = _TAG.unpack_from, _U32.unpack_from, _U16.unpack_from
    in_item = [False]  # the stack: False in a sequence, True in an item of undefined length
    end = len(data)
    while True:
        if pos + 8 > end:
            raise TruncatedBytes("the data ends inside a sequence")
        group, elem = unpack_tag(data, pos)
        if not in_item[-1]:  # in a sequence: an item, or the sequence's end
            length = unpack_u32(data, pos + 4)[0]
            pos += 8
            if group != 0xFFFE or elem not in (0xE000, 0xE0DD):
                raise UnsupportedBytes(f"unexpected tag {group:04X},{elem:04X} in a sequence")
            if elem == 0xE0DD:
                in_item.pop()
                if not in_item:
                    return pos
            elif length == _UNDEFINED:
                in_item.append(True)
            else:
                pos += length
            continue
        if group == 0xFFFE:
            if elem != 0xE00D:
                raise UnsupportedBytes(f"unexpected tag FFFE,{elem:04X} in an item")
            in_item.pop()
            pos += 8
            continue
        if implicit:
            length, pos = unpack_u32(data, pos + 4)[0], pos + 8
        elif data[pos + 4 : pos + 6] in _LONG_VRS:
            if pos + 12 > end:
                raise TruncatedBytes("the data ends inside a sequence")
            length = unpack_u32(data, pos + 8)[0]
            if length == _UNDEFINED and data[pos + 4 : pos + 6] == b"UN":
                raise UnsupportedBytes("UN of undefined length")
            pos += 12
        else:
            length, pos = unpack_u16(data, pos + 6)[0], pos + 8
        if length == _UNDEFINED:
            if len(in_item) >= 2 * _MAX_DEPTH:
                raise UnsupportedBytes("sequences nested too deep")
            in_item.append(False)  # a nested sequence: its items follow
        else:
            pos += length


def raw_value(raw: bytes, kind: bool | str) -> Any:
    """A value's bytes (little endian) decoded as ``kind`` says (see :func:`tag_table`).

    Example:
        >>> raw_value(b"1000", False), raw_value(b"\\x30\\x00", True)
        ('1000', 48)
    """
    return _value(raw, kind)


def _value(raw: bytes, kind: bool | str) -> Any:
    if kind is True:
        return _U16.unpack_from(raw)[0] if len(raw) >= 2 else None
    if kind in _BINARY_FLOATS:
        code, size = _BINARY_FLOATS[kind]  # type: ignore[index]
        return list(struct.unpack(f"<{len(raw) // size}{code}", raw[: len(raw) // size * size]))
    text = raw.decode("ascii")
    if "\x1b" in text:  # ISO 2022 escape sequences: pydicom decodes those
        raise UnsupportedBytes("ISO 2022 text")
    parts = [part.strip(" \x00") for part in text.split("\\")]
    return parts if len(parts) > 1 else parts[0]
