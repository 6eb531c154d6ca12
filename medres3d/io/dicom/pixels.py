"""Pixel decoding of DICOM files, and the rescale to output values.

Uncompressed little/big-endian pixel data is read straight from the file at the offset the header
scan recorded (no second parse of the header): one ``readinto`` into a NumPy buffer. Every other
transfer syntax (JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE, deflate) goes through pydicom's
pixel decoders with the installed plugins (pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls,
python-gdcm). Unused high bits (BitsStored < BitsAllocated) are masked or sign-extended the way
pydicom does. A failure names the file in a :class:`~medres3d.errors.CorruptFileError`.

Example:
    >>> from pydicom.data import get_testdata_file
    >>> from medres3d.io.dicom.header import read_header
    >>> read_frames(read_header(get_testdata_file("MR_small_RLE.dcm"))).shape
    (1, 64, 64)
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import pydicom
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian

from medres3d.errors import CorruptFileError, ResourceLimitError, UnsupportedFormatError
from medres3d.io.dicom.header import MAX_INFLATED_HEADER_BYTES, inflate_dataset
from medres3d.io.dicom.types import FileHeader

# (7FE0,0010) PixelData in either byte order; Float/DoubleFloatPixelData go through pydicom.
_INTEGER_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
# Explicit VR pixel data element header: tag (4), VR (2), reserved (2), 32-bit length (4).
_EXPLICIT_LONG_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN")
# Inflated bytes allowed after a Deflated file's claimed pixel data (trailing elements, padding).
_TRAILING_BYTES = 2**20


def pixel_dtype(header: FileHeader) -> np.dtype:
    """The NumPy dtype of one stored sample (byte order included).

    Raises:
        UnsupportedFormatError: BitsAllocated is not 8, 16 or 32 (1-bit and packed 12-bit data
            are decoded by pydicom instead; their dtype is what pydicom returns).
    """
    if header.bits_allocated not in (8, 16, 32):
        raise UnsupportedFormatError(header.path, f"BitsAllocated={header.bits_allocated} is not 8, 16 or 32")
    kind = "i" if header.pixel_representation == 1 else "u"
    order = ">" if header.transfer_syntax == ExplicitVRBigEndian else "<"
    return np.dtype(f"{order}{kind}{header.bits_allocated // 8}")


def read_frames(header: FileHeader) -> np.ndarray:
    """All frames of a file as ``(frames, rows, columns)`` stored values (no rescale).

    Raises:
        CorruptFileError: truncated or undecodable pixel data, a size other than the header says, or
            BitsStored < 1.
        UnsupportedFormatError: colour data.
    """
    _check_bits_stored(header)
    frames = _read_native(header) if header.is_native and header.bits_allocated in (8, 16, 32) else None
    if frames is None:
        frames = _decode_with_pydicom(header)
    if header.bits_stored < header.bits_allocated and frames.dtype.kind in "iu":
        # The unused high bits may hold anything (PS3.5 8.1.1): shift them out, as pydicom does;
        # the right shift of a signed type sign-extends.
        shift = frames.dtype.itemsize * 8 - header.bits_stored
        np.left_shift(frames, shift, out=frames)
        np.right_shift(frames, shift, out=frames)
    return frames


def _check_bits_stored(header: FileHeader) -> None:
    # BitsStored 0 would mask every sample to 0: a blank volume instead of an error
    if header.bits_stored < 1:
        raise CorruptFileError(
            header.path,
            f"BitsStored={header.bits_stored}, but it must be 1..BitsAllocated ({header.bits_allocated})",
        )


def _read_native(header: FileHeader) -> np.ndarray | None:
    """Integer pixel data read in place; None for float pixel data (left to pydicom)."""
    dtype = pixel_dtype(header)
    expected = header.frames * header.rows * header.columns
    try:
        with open(header.path, "rb") as fp:
            fp.seek(header.pixel_offset or 0)
            element = fp.read(12)
            if element[:4] not in _INTEGER_PIXEL_TAGS:
                return None
            length = _value_length(header, element, fp)
            if length < expected * dtype.itemsize:
                raise CorruptFileError(
                    header.path,
                    f"pixel data holds {length} bytes, but {header.frames}x{header.rows}x{header.columns} "
                    f"{dtype.itemsize}-byte samples need {expected * dtype.itemsize}",
                )
            frames = np.empty(expected, dtype=dtype)
            got = fp.readinto(memoryview(frames).cast("B"))
    except OSError as err:
        raise CorruptFileError(header.path, f"cannot read pixel data: {err}") from err
    if got != frames.nbytes:
        raise CorruptFileError(
            header.path, f"file is truncated: pixel data has {got} of {frames.nbytes} bytes"
        )
    if not dtype.isnative:
        frames = frames.astype(dtype.newbyteorder("="))
    return frames.reshape(header.frames, header.rows, header.columns)


def _value_length(header: FileHeader, element: bytes, fp: object) -> int:
    """Length of the pixel data value; leaves ``fp`` at the start of the value."""
    if len(element) < 8:
        raise CorruptFileError(header.path, "file is truncated at the pixel data element")
    order = "big" if header.transfer_syntax == ExplicitVRBigEndian else "little"
    if element[4:6] in _EXPLICIT_LONG_VRS and header.transfer_syntax != pydicom.uid.ImplicitVRLittleEndian:
        if len(element) < 12:
            raise CorruptFileError(header.path, "file is truncated at the pixel data element")
        return int.from_bytes(element[8:12], order)
    fp.seek(-4, 1)  # type: ignore[attr-defined]  # implicit VR: the value starts after 8 bytes
    return int.from_bytes(element[4:8], order)


def _decode_with_pydicom(header: FileHeader) -> np.ndarray:
    syntax = UID(header.transfer_syntax)
    inflated = _inflate_bounded(header) if syntax == DeflatedExplicitVRLittleEndian else None
    try:
        if inflated is None:
            ds = pydicom.dcmread(header.path)
        else:
            ds = pydicom.dcmread(io.BytesIO(inflated), force=True)
            # what the deflate stream holds is Explicit VR Little Endian, native pixels included
            ds.file_meta = read_file_meta_info(header.path)
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        frames = ds.pixel_array
    except Exception as err:  # decoders raise many types (RuntimeError, ValueError, plugin errors)
        raise CorruptFileError(
            header.path, f"cannot decode pixel data ({syntax.name or syntax}): {type(err).__name__}: {err}"
        ) from err
    if frames.ndim == 2:
        frames = frames[None]
    if frames.shape != (header.frames, header.rows, header.columns):
        raise CorruptFileError(
            header.path,
            f"decoded pixel data has shape {frames.shape}, but the header says "
            f"{header.frames} frame(s) of {header.rows}x{header.columns}",
        )
    if not frames.flags.writeable:
        frames = frames.copy()
    return frames


def _inflate_bounded(header: FileHeader) -> bytes | None:
    """A Deflated file's dataset, inflated up to what its header claims (None: pydicom reads it).

    pydicom would inflate the stream whatever its size; here it stops after the header, the pixel
    bytes the header claims (a claim already checked against ``max_voxels``) and 1 MiB for trailing
    elements, so a small file that inflates to gigabytes is refused after that much.
    """
    claimed = -(-header.frames * header.rows * header.columns * header.bits_allocated // 8)
    try:
        with open(header.path, "rb") as fp:
            head = inflate_dataset(fp, MAX_INFLATED_HEADER_BYTES, header_only=True)
            if head is None:
                return None
            limit = len(head[0]) + claimed + _TRAILING_BYTES
            inflated = inflate_dataset(fp, limit)
    except (OSError, zlib.error) as err:
        raise CorruptFileError(header.path, f"cannot inflate the Deflated dataset: {err}") from err
    if inflated is None or not inflated[1]:
        raise ResourceLimitError(
            header.path,
            f"its Deflated dataset inflates to more than {limit} bytes, more than its header and the "
            f"{header.frames}x{header.rows}x{header.columns} pixels it claims need (a deflate bomb?)",
        )
    return inflated[0]


def stored_range(header: FileHeader) -> tuple[int, int]:
    """The smallest and largest value BitsStored and PixelRepresentation allow.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> from medres3d.io.dicom.header import read_header
        >>> stored_range(read_header(get_testdata_file("CT_small.dcm")))
        (-32768, 32767)
    """
    _check_bits_stored(header)
    bits = header.bits_stored
    if header.pixel_representation == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def rescale_into(out: np.ndarray, frame: np.ndarray, slope: float, intercept: float) -> None:
    """``out[...] = frame * slope + intercept`` computed in ``out``'s dtype, without temporaries.

    Integer outputs (the "native" mode) only ever get slope 1 and an integer intercept.
    """
    if out.dtype.kind == "f" and slope != 1:
        np.multiply(frame, out.dtype.type(slope), out=out, casting="unsafe")
        if intercept:
            out += out.dtype.type(intercept)
    else:
        np.copyto(out, frame, casting="unsafe")
        if intercept:
            out += out.dtype.type(intercept)


# philips_scaling=: "display" keeps RescaleSlope/Intercept (what the scanner displays, and what
# pydicom, SimpleITK and MONAI give); "precise" divides by Philips' MR Scale Slope as dcm2niix does.
PHILIPS_SCALINGS = ("display", "precise")


def output_rescale(
    header: FileHeader, slope: float, intercept: float, philips_scaling: str
) -> tuple[float, float]:
    """The slope and intercept to apply to stored values, Philips' precise scaling included.

    Philips stores a floating-point "precise" value FP = DV / (RS * SS), where DV = PV * RS + RI is
    the displayed value and SS the MR Scale Slope (2005,100E): FP = PV / SS + RI / (RS * SS)
    (dcm2niix's formula). Without a usable SS (other vendors, a zero or NaN value) the display
    rescale is returned unchanged.

    Example:
        >>> from dataclasses import replace
        >>> from pydicom.data import get_testdata_file
        >>> from medres3d.io.dicom.header import read_header
        >>> h = replace(read_header(get_testdata_file("MR_small.dcm")), philips_scale_slope=4.0)
        >>> output_rescale(h, 2.0, 10.0, "precise")
        (0.25, 1.25)
    """
    scale = header.philips_scale_slope
    if philips_scaling == "display" or scale is None or slope == 0:
        return slope, intercept
    return 1.0 / scale, intercept / (slope * scale)
