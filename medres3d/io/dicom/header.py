"""Header-only reading of one DICOM file: the few tags that grouping, sorting and decoding need.

:func:`read_header` parses a file with ``stop_before_pixels=True`` and ``specific_tags`` (pydicom
skips every other element's value with a seek), notes where the pixel data element starts so that
uncompressed pixels can later be read straight from that offset, and classifies the file: an image
to stack (``FileHeader``) or a ``SkippedFile`` with the reason (empty, not DICOM, unreadable, a
non-image object such as SEG/SR/RTSTRUCT/PR/KO/DICOMDIR, no pixel data, colour).

Example:
    >>> from pydicom.data import get_testdata_file
    >>> h = read_header(get_testdata_file("CT_small.dcm"))
    >>> h.modality, h.rows, h.columns, h.pixel_offset is not None
    ('CT', 128, 128, True)
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medres3d.errors import ResourceLimitError
from medres3d.io.dicom.rawheader import parse_header, raw_value, tag_table
from medres3d.io.dicom.types import FileHeader, SkippedFile

# Only these are parsed; every other element is skipped by seeking past its value.
SCAN_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
    "SeriesNumber", "SeriesDescription", "ImageType", "AcquisitionNumber", "InstanceNumber",
    "TemporalPositionIdentifier", "EchoNumbers", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "RescaleSlope", "RescaleIntercept", "GridFrameOffsetVector", "DoseGridScaling",
    "EchoTime", "RepetitionTime", "AcquisitionTime", "DiffusionBValue", "DiffusionGradientOrientation",
]  # fmt: skip
# Vendor private tags that tell the volumes of a 4D series apart (and a Siemens mosaic), read only
# when their block's private creator (the element 00xx,0010 of their group) matches:
# tag -> (name, kind as in rawheader.tag_table, group, private creator).
PRIVATE_SCAN_TAGS: dict[int, tuple[str, bool | str, str]] = {
    0x0019100A: ("SiemensImagesInMosaic", True, "SIEMENS MR HEADER"),
    0x0019100C: ("SiemensBValue", False, "SIEMENS MR HEADER"),
    0x0019100E: ("SiemensGradientDirection", "FD", "SIEMENS MR HEADER"),
    0x001910BB: ("GEGradientX", False, "GEMS_ACQU_01"),
    0x001910BC: ("GEGradientY", False, "GEMS_ACQU_01"),
    0x001910BD: ("GEGradientZ", False, "GEMS_ACQU_01"),
    0x00431039: ("GESlopInt6to9", False, "GEMS_PARM_01"),
    # Philips MR Scale Slope: the "precise" (floating-point) value is displayed / (RS * this)
    0x2005100E: ("PhilipsScaleSlope", "FL", "PHILIPS MR IMAGING DD 001"),
    # Philips single-frame DWI: b-value, and the gradient along RL, AP, FH (the LPS axes)
    0x20011003: ("PhilipsBValue", "FL", "PHILIPS IMAGING DD 001"),
    0x200510B0: ("PhilipsGradientX", "FL", "PHILIPS MR IMAGING DD 001"),
    0x200510B1: ("PhilipsGradientY", "FL", "PHILIPS MR IMAGING DD 001"),
    0x200510B2: ("PhilipsGradientZ", "FL", "PHILIPS MR IMAGING DD 001"),
}
# The private creators of those blocks.
_CREATOR_TAGS = {
    0x00190010: "Creator0019", 0x00430010: "Creator0043",
    0x20010010: "Creator2001", 0x20050010: "Creator2005",
}  # fmt: skip
# Philips names its blocks of groups 2001 and 2005 either way (exports differ).
_PHILIPS_CREATORS = frozenset({"PHILIPS IMAGING DD 001", "PHILIPS MR IMAGING DD 001"})

_FAST_TAGS = {
    **tag_table(SCAN_TAGS),
    **{tag: (name, kind) for tag, (name, kind, _) in PRIVATE_SCAN_TAGS.items()},
    **{tag: (name, False) for tag, name in _CREATOR_TAGS.items()},
}
# pydicom's specific_tags: keywords, then the private tags and their creators by number.
_PYDICOM_TAGS: list[Any] = [*SCAN_TAGS, *PRIVATE_SCAN_TAGS, *_CREATOR_TAGS]
# Pixel data element tags (PixelData, FloatPixelData, DoubleFloatPixelData), both byte orders.
_PIXEL_TAG_BYTES = frozenset(
    (0x7FE0).to_bytes(2, order) + elem.to_bytes(2, order)
    for elem in (0x0010, 0x0008, 0x0009)
    for order in ("little", "big")
)
# First bytes of a dataset without preamble: group 0002 or 0008, little or big endian.
_BARE_DATASET_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")

_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
# What pydicom raises on damaged headers (several found by fuzzing: tests/reliability, fuzz/).
_HEADER_ERRORS = (
    InvalidDicomError, BytesLengthException, NotImplementedError, ValueError, EOFError, KeyError,
    TypeError, struct.error, zlib.error,
)  # fmt: skip
# A Deflated Explicit VR file's header is inflated up to its pixel data element, at most this many
# bytes (an Enhanced header of thousands of frames takes a few MB); its pixel data is inflated
# only when decoded, bounded by the pixels its header claims (medres3d.io.dicom.pixels).
MAX_INFLATED_HEADER_BYTES = 2**26
# Explicit VR little endian starts of a top-level pixel data element (PixelData, Float/Double).
_PIXEL_ELEMENT_STARTS = tuple(
    b"\xe0\x7f" + elem.to_bytes(2, "little") + b"O" for elem in (0x0010, 0x0008, 0x0009)
)
# SOP classes that carry no volume even when they hold pixel data (SEG is a label map, not a scan).
_NON_IMAGE_WORDS = (
    "SR Storage", "Presentation State", "Key Object", "Segmentation", "Structure Set", "RT Plan",
    "RT Ion Plan", "Treatment Record", "RT Beams", "Waveform", "Encapsulated", "Raw Data",
    "Spatial Registration", "Spatial Fiducials", "Real World Value Mapping", "Media Storage Directory",
    "Measurement Report", "Parametric Map",
)  # fmt: skip
# Multi-frame families whose frames carry their own geometry in functional groups.
_ENHANCED_WORDS = ("Enhanced", "Legacy Converted")


def read_header(path: str | os.PathLike[str], fast: bool = True) -> FileHeader | SkippedFile:
    """Read one file's header (no pixels) and classify it.

    Never raises for a bad file: the problem comes back as a :class:`SkippedFile`. With ``fast``
    (the default), Part 10 little-endian files go through :mod:`medres3d.io.dicom.rawheader`
    (about 10 times faster); every other file, and ``fast=False``, through pydicom.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> read_header(get_testdata_file("test-SR.dcm")).reason
        'not an image: Comprehensive SR Storage (SR)'
    """
    path = Path(path)
    try:
        with open(path, "rb") as fp:
            preamble = fp.read(132)
            if not preamble:
                return SkippedFile(path, "empty file (0 bytes)", "empty")
            fp.seek(0)
            # Old files without the 128-byte preamble and "DICM" start straight with a group 0002
            # or 0008 element; anything else is not DICOM, and force-parsing it would read garbage.
            has_prefix = preamble[128:132] == b"DICM"
            if not has_prefix and preamble[:2] not in _BARE_DATASET_STARTS:
                return SkippedFile(path, "not a DICOM file (no DICM prefix)", "not-dicom")
            if fast and has_prefix:
                parsed = parse_header(fp, _FAST_TAGS)
                if parsed is not None:
                    return _classify(path, parsed[0], True, parsed[1])
                fp.seek(0)
            inflated = (
                inflate_dataset(fp, MAX_INFLATED_HEADER_BYTES, header_only=True) if has_prefix else None
            )
            if inflated is not None:
                if not inflated[1]:
                    reason = (
                        f"its Deflated dataset inflates to more than {MAX_INFLATED_HEADER_BYTES} bytes "
                        "before any pixel data (a deflate bomb?); refused before inflating the rest"
                    )
                    return SkippedFile(path, reason, "resource")
                ds, has_pixels = _parse_inflated(path, inflated[0], _PYDICOM_TAGS)
                if not has_pixels and "Rows" in ds:
                    return SkippedFile(
                        path, "file is truncated: its deflate stream ends before the pixel data", "unreadable"
                    )
                pixel_offset: int | None = None  # the pixels are in the deflate stream, not at a file offset
            else:
                fp.seek(0)
                ds = pydicom.dcmread(
                    fp, stop_before_pixels=True, force=not has_prefix, specific_tags=_PYDICOM_TAGS
                )
                pixel_offset = fp.tell()
                size = os.fstat(fp.fileno()).st_size
                if pixel_offset > size:
                    # pydicom seeks past the values it skips, so a file cut inside one ends up here
                    return SkippedFile(
                        path,
                        f"truncated: the header runs past the end of the file ({size} bytes)",
                        "unreadable",
                    )
                peek = fp.read(4)
                has_pixels = peek in _PIXEL_TAG_BYTES
                if not peek and ("Rows" in ds or "Image Storage" in UID(_sop_class(ds)).name):
                    # group 0028 (Rows, Columns) comes just before the pixel data: a header cut
                    # on an element boundary lacks it, a header-only export keeps it
                    complete = "Rows" in ds and "Columns" in ds
                    if not (complete and _ends_on_an_element(fp, size, has_prefix)):
                        return SkippedFile(
                            path, "file is truncated: it ends before the pixel data", "unreadable"
                        )
                    return SkippedFile(
                        path,
                        f"has no pixel data: its header ends without a PixelData element "
                        f"({UID(_sop_class(ds)).name or 'unknown SOP class'}; a header-only export?)",
                        "non-image",
                    )
        # pydicom converts values on first access: a damaged value raises here, not in dcmread
        values = {kw: ds.get(kw) for kw in SCAN_TAGS if kw in ds}
        values.update(_private_values(ds))
        values["SOPClassUID"] = _sop_class(ds)
        values["TransferSyntaxUID"] = _transfer_syntax(ds)
    except OSError as err:
        return SkippedFile(path, f"cannot read file: {err.strerror or err}", "unreadable")
    except _HEADER_ERRORS as err:
        return SkippedFile(path, f"unreadable DICOM header: {err}", "unreadable")
    return _classify(path, values, has_pixels, pixel_offset)


def _ends_on_an_element(fp: BinaryIO, size: int, has_prefix: bool) -> bool:
    """True when the file's last top-level element ends exactly at the end of the file.

    Tells a header-only file (complete, without pixel data) from a copy cut before or inside
    the pixel data element: pydicom stops silently at a partial element header. Only called for
    files that end before any pixel data, so the second, full header parse costs nothing otherwise.
    """
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_prefix)
    except _HEADER_ERRORS:
        return False
    raw = [elem for elem in ds._dict.values() if hasattr(elem, "value_tell")]  # unconverted elements
    if not raw:
        return True  # only sequences, whose ends pydicom does not keep: nothing says it was cut
    last = max(raw, key=lambda elem: elem.value_tell)
    return last.length != 0xFFFFFFFF and last.value_tell + last.length == size


def _sop_class(ds: pydicom.Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    media = meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""
    return str(ds.get("SOPClassUID", "") or media or "")


def read_dataset_header(path: str | os.PathLike[str], specific_tags: list[Any]) -> pydicom.Dataset:
    """pydicom's header-only read of ``specific_tags``; a Deflated file's header is inflated alone.

    Raises:
        ResourceLimitError: a Deflated header longer than ``MAX_INFLATED_HEADER_BYTES``.
        OSError, zlib.error and pydicom's errors on a damaged file.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> int(read_dataset_header(get_testdata_file("rtdose.dcm"), ["NumberOfFrames"]).NumberOfFrames)
        15
    """
    with open(path, "rb") as fp:
        inflated = inflate_dataset(fp, MAX_INFLATED_HEADER_BYTES, header_only=True)
        if inflated is None:
            fp.seek(0)
            return pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=specific_tags)
    if not inflated[1]:
        raise ResourceLimitError(
            path,
            f"its Deflated dataset inflates to more than {MAX_INFLATED_HEADER_BYTES} bytes before any "
            "pixel data (a deflate bomb?)",
        )
    return _parse_inflated(Path(path), inflated[0], specific_tags)[0]


def _private_values(ds: pydicom.Dataset) -> dict[str, Any]:
    """The private scan tags of a pydicom dataset, as the fast parser returns them.

    Without a private dictionary match (Implicit VR files), pydicom gives their raw bytes: they
    are decoded here the same way the fast parser decodes them.
    """
    out: dict[str, Any] = {}
    kinds = {tag: (name, kind) for tag, (name, kind, _) in PRIVATE_SCAN_TAGS.items()}
    kinds.update({tag: (name, False) for tag, name in _CREATOR_TAGS.items()})
    for tag, (name, kind) in kinds.items():
        if tag not in ds:
            continue
        value = ds[tag].value
        if isinstance(value, bytes):
            try:
                value = raw_value(value, kind)
            except (UnicodeDecodeError, struct.error):
                continue  # an undecodable optional value is as good as absent
        out[name] = value
    return out


def _parse_inflated(path: Path, data: bytes, specific_tags: list[Any]) -> tuple[pydicom.Dataset, bool]:
    """The header in an inflated Deflated dataset, and whether pixel data follows it.

    pydicom, given the file, would inflate it whole, pixels included; given the inflated bytes it
    parses the header alone.
    """
    stream = io.BytesIO(data)
    ds = pydicom.dcmread(stream, stop_before_pixels=True, force=True, specific_tags=specific_tags)
    ds.file_meta = read_file_meta_info(path)
    return ds, stream.read(4) in _PIXEL_TAG_BYTES


def inflate_dataset(fp: BinaryIO, limit: int, *, header_only: bool = False) -> tuple[bytes, bool] | None:
    """The inflated dataset of a Deflated Explicit VR file, at most ``limit`` bytes of it.

    pydicom inflates such a dataset whole, pixel data included, before it can stop at the pixels:
    a 1 MB file can claim gigabytes. Here the stream is inflated in bounded steps and stops at
    ``limit``; with ``header_only``, as soon as the top-level pixel data element has begun.

    Returns:
        ``(data, complete)``: ``complete`` is False when more than ``limit`` bytes would be needed.
        None when the file is not a Deflated file laid out the way pydicom inflates it.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        ...     inflate_dataset(f, 2**20) is None
        True
    """
    fp.seek(132)
    group_length = fp.read(12)
    if group_length[:6] != b"\x02\x00\x00\x00UL":
        return None  # no meta group length: not the layout of a Deflated file that pydicom inflates
    meta = fp.read(int.from_bytes(group_length[8:12], "little"))
    if DeflatedExplicitVRLittleEndian.encode() not in meta:
        return None
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while (chunk := fp.read(1 << 20)) and not inflater.eof:
        while chunk:
            searched = max(0, len(out) - 12)  # an element start may straddle two steps
            out += inflater.decompress(chunk, 1 << 20)
            chunk = inflater.unconsumed_tail
            if len(out) > limit:
                return bytes(out[:limit]), False
            # found with its whole 12-byte element header (tag, VR, reserved, length) for pydicom
            if header_only and any(
                out.find(start, searched, len(out) - 7) >= 0 for start in _PIXEL_ELEMENT_STARTS
            ):
                return bytes(out), True
    return bytes(out), True


def _transfer_syntax(ds: pydicom.Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if not ts:  # no file meta: the encoding pydicom detected
        ts = ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian
    return ts


def _classify(
    path: Path, ds: dict[str, Any], has_pixels: bool, pixel_offset: int | None
) -> FileHeader | SkippedFile:
    """Turn the header values (keyword -> pydicom or plain value) into a FileHeader or a SkippedFile."""
    sop = str(ds.get("SOPClassUID") or "")
    if not sop and "Rows" not in ds:
        return SkippedFile(path, "not a DICOM image (no SOPClassUID, no Rows)", "not-dicom")
    sop_name = UID(sop).name if sop else "unknown SOP class"
    modality = str(ds.get("Modality", "") or "")
    if sop == _DICOMDIR_SOP or any(word in sop_name for word in _NON_IMAGE_WORDS):
        label = "DICOMDIR" if sop == _DICOMDIR_SOP else modality or "?"
        return SkippedFile(path, f"not an image: {sop_name} ({label})", "non-image")
    if not has_pixels:
        return SkippedFile(
            path, f"not an image: no pixel data ({sop_name}, modality {modality or '?'})", "non-image"
        )
    try:
        samples = _int(ds, "SamplesPerPixel", 1)
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
        if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2", ""):
            return SkippedFile(
                path,
                f"colour image (SamplesPerPixel={samples}, PhotometricInterpretation={photometric or '?'}): "
                "not a CT/MR volume",
                "unsupported",
            )
        bits_allocated = _int(ds, "BitsAllocated", 16)
        return FileHeader(
            path=path,
            sop_class_uid=sop,
            modality=modality,
            patient_id=str(ds.get("PatientID", "") or ""),
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            series_number=_int(ds, "SeriesNumber", None),
            description=str(ds.get("SeriesDescription", "") or ""),
            image_type=tuple(str(v).strip().upper() for v in _multi(ds.get("ImageType"))),
            acquisition=_int(ds, "AcquisitionNumber", None),
            instance_number=_int(ds, "InstanceNumber", None),
            temporal_position=_int(ds, "TemporalPositionIdentifier", None),
            echo=_int(ds, "EchoNumbers", None),
            position=_floats(ds, "ImagePositionPatient", 3),
            orientation=_floats(ds, "ImageOrientationPatient", 6),
            pixel_spacing=_floats(ds, "PixelSpacing", 2),
            rows=_int(ds, "Rows", 0),
            columns=_int(ds, "Columns", 0),
            frames=max(1, _int(ds, "NumberOfFrames", 1)),
            samples_per_pixel=samples,
            photometric=photometric or "MONOCHROME2",
            bits_allocated=bits_allocated,
            bits_stored=_int(ds, "BitsStored", bits_allocated),
            pixel_representation=_int(ds, "PixelRepresentation", 0),
            slope=_slope(ds, sop_name),
            intercept=_float(ds, "RescaleIntercept", 0.0),
            transfer_syntax=str(ds["TransferSyntaxUID"]),
            pixel_offset=pixel_offset,
            is_enhanced=any(word in sop_name for word in _ENHANCED_WORDS),
            echo_time=_optional_float(ds, "EchoTime"),
            repetition_time=_optional_float(ds, "RepetitionTime"),
            acquisition_time=str(ds.get("AcquisitionTime", "") or "").strip(),
            b_value=_b_value(ds),
            gradient=_gradient(ds),
            mosaic_images=_mosaic_images(ds),
            philips_scale_slope=_philips_scale_slope(ds),
        )
    except (ValueError, TypeError, OverflowError) as err:
        return SkippedFile(path, f"unreadable DICOM header value: {err}", "unreadable")


def _multi(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float):
        return [value]
    return list(value)  # type: ignore[call-overload]


def _int(ds: dict[str, Any], keyword: str, default: int | None) -> int | None:
    values = _multi(ds.get(keyword))
    try:
        return int(float(values[0]))  # IS values such as "2.0" occur in the wild
    except (IndexError, ValueError, TypeError, OverflowError):
        return default  # absent or malformed: callers validate the values they rely on


def _float(ds: dict[str, Any], keyword: str, default: float) -> float:
    values = _multi(ds.get(keyword))
    if not values or values[0] in ("", None):
        return default
    return float(values[0])  # a malformed rescale is an error, not a silent default


def _floats(ds: dict[str, Any], keyword: str, count: int) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in _multi(ds.get(keyword)))
    except (ValueError, TypeError):
        return None
    return values if len(values) == count else None


def _optional_float(ds: dict[str, Any], keyword: str) -> float | None:
    """A number that only labels or tells volumes apart: malformed is as good as absent."""
    try:
        values = _multi(ds.get(keyword))
        return float(values[0]) if values and values[0] not in ("", None) else None  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError):
        return None


def _creator(ds: dict[str, Any], name: str) -> str:
    return str(ds.get(name, "") or "").strip().upper()


def _b_value(ds: dict[str, Any]) -> float | None:
    """DiffusionBValue, else Siemens' (0019,100C), GE's first slop_int_6 value or Philips' (2001,1003)."""
    standard = _optional_float(ds, "DiffusionBValue")
    if standard is not None:
        return standard
    if _creator(ds, "Creator0019") == "SIEMENS MR HEADER":
        siemens = _optional_float(ds, "SiemensBValue")
        if siemens is not None:
            return siemens
    if _creator(ds, "Creator0043") == "GEMS_PARM_01":
        ge = _optional_float(ds, "GESlopInt6to9")
        if ge is not None:
            return ge % 1e9  # GE adds 1e9 to flag a b-value set by the user (dcm2niix does the same)
    if _creator(ds, "Creator2001") in _PHILIPS_CREATORS:
        philips = _optional_float(ds, "PhilipsBValue")
        if philips is not None and math.isfinite(philips):
            return philips
    return None


def _gradient(ds: dict[str, Any]) -> tuple[float, float, float] | None:
    """The diffusion gradient direction in the scanner frame (DICOM LPS), when the header has one."""
    values: object = ds.get("DiffusionGradientOrientation")
    creator = _creator(ds, "Creator0019")
    if values is None and creator == "SIEMENS MR HEADER":
        values = ds.get("SiemensGradientDirection")
    if values is None and creator == "GEMS_ACQU_01":
        values = [ds.get(f"GEGradient{axis}") for axis in "XYZ"]
    if values is None and _creator(ds, "Creator2005") in _PHILIPS_CREATORS:
        philips = [ds.get(f"PhilipsGradient{axis}") for axis in "XYZ"]
        # each is one FL value (a list of one from the fast parser's binary floats)
        values = None if any(v is None for v in philips) else [_multi(v)[0] if _multi(v) else None
                                                                for v in philips]  # fmt: skip
    try:
        vector = tuple(float(v) for v in _multi(values))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None
    return vector if len(vector) == 3 and all(math.isfinite(v) for v in vector) else None  # type: ignore[return-value]


def _mosaic_images(ds: dict[str, Any]) -> int | None:
    """Siemens' NumberOfImagesInMosaic (0019,100A), when the private block is Siemens'."""
    if _creator(ds, "Creator0019") != "SIEMENS MR HEADER":
        return None
    return _int(ds, "SiemensImagesInMosaic", None)


def _slope(ds: dict[str, Any], sop_name: str) -> float:
    """RescaleSlope; for RT Dose, DoseGridScaling (dose = stored value x scaling, PS3.3 C.8.8.3).

    RT Dose has no Modality LUT: its stored values are in units of DoseGridScaling, for a
    single-frame dose file as for a multi-frame one.
    """
    if "RT Dose" in sop_name or str(ds.get("Modality", "") or "") == "RTDOSE":
        scaling = _multi(ds.get("DoseGridScaling"))
        if scaling and scaling[0] not in ("", None):
            return float(scaling[0])  # a malformed scaling is an error, like a malformed slope
    return _float(ds, "RescaleSlope", 1.0)


def _philips_scale_slope(ds: dict[str, Any]) -> float | None:
    """Philips' MR Scale Slope (2005,100E) when the private block is Philips' and the value usable."""
    if _creator(ds, "Creator2005") not in _PHILIPS_CREATORS:
        return None
    value = _optional_float(ds, "PhilipsScaleSlope")
    return value if value is not None and math.isfinite(value) and value != 0 else None
