"""Generators of bad, hostile and awkward inputs for the reliability tests and the fuzz seeds.

Every builder writes one input under a folder and returns its path. Inputs are derived from
valid files written by :mod:`medres3d.synthetic` (or by nibabel/pydicom directly), then damaged in
one precise way, so a test knows exactly which error and which reason to expect.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.filebase
import pydicom.filewriter
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from medres3d.synthetic import (
    centered_origin,
    ct_phantom,
    make_affine,
    write_dicom_series,
    write_enhanced_dicom,
    write_nifti,
)

SHAPE = (8, 8, 6)  # (i, j, k) of the small valid volumes the damaged inputs start from
# NIfTI-1 header field offsets (bytes) used to tamper with raw headers
NIFTI_DIM_OFFSET = 40
NIFTI_HEADER_SIZE = 348


def small_affine(spacing: Sequence[float] = (1.0, 1.0, 2.0), **kwargs) -> np.ndarray:
    return centered_origin(SHAPE, make_affine(spacing, **kwargs))


def phantom(shape: Sequence[int] = SHAPE, seed: int = 0) -> np.ndarray:
    return ct_phantom(tuple(shape), lesion=False, seed=seed)


# ----------------------------------------------------------------------------------------- NIfTI
def nifti_bytes(
    data: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    header_edit=None,
) -> bytes:
    """An uncompressed single-file NIfTI-1 image as bytes; ``header_edit(header)`` may tamper first."""
    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    image.header.set_sform(image.affine, code=1)
    buffer = io.BytesIO()
    file_map = image.make_file_map({"image": buffer, "header": buffer})
    image.to_file_map(file_map)
    raw = buffer.getvalue()
    if header_edit is None:
        return raw
    # nibabel rewrites the header from the image on save, so tamper with the written bytes
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    header_edit(header)
    return header.binaryblock + raw[NIFTI_HEADER_SIZE:]


def raw_nifti_header(shape: Sequence[int], dtype=np.int16, affine: np.ndarray | None = None) -> bytes:
    """A NIfTI-1 header (with the 4-byte extension flag) claiming ``shape``, with no voxel data after it.

    nibabel's header setter validates nothing about sizes, so any claim can be written.
    """
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header["dim"][0] = len(shape)
    header["dim"][1 : len(shape) + 1] = shape
    header.set_sform(np.eye(4) if affine is None else affine, code=1)
    header["vox_offset"] = NIFTI_HEADER_SIZE + 4
    return header.binaryblock + b"\0\0\0\0"


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def valid_nifti(path: Path, dtype=np.int16, shape: Sequence[int] = SHAPE) -> Path:
    return write_nifti(phantom(shape), centered_origin(shape, make_affine()), path, dtype=dtype)


@cache
def zero_gzip_member(size: int = 64 * 2**20) -> bytes:
    """One gzip member of ``size`` zero bytes (about 64 kB for 64 MiB)."""
    return gzip.compress(bytes(size), compresslevel=9, mtime=0)


def gzip_bomb_nifti(path: Path, total_bytes: int) -> Path:
    """A valid small ``.nii.gz`` followed by gzip members of zeros decompressing to ``total_bytes``.

    Concatenated gzip members are one valid gzip stream (RFC 1952), so the file is a few MB and
    gunzips to gigabytes.
    """
    image = nifti_bytes(phantom().astype(np.int16), small_affine())
    member = zero_gzip_member()
    count = max(1, total_bytes // (64 * 2**20))
    return write_bytes(path, gzip.compress(image, mtime=0) + member * count)


def huge_claim_gzip_bomb(path: Path, shape: Sequence[int], zero_members: int = 16) -> Path:
    """A ``.nii.gz`` whose header claims ``shape``, followed by ``zero_members`` x 64 MiB of zeros."""
    head = raw_nifti_header(shape)
    return write_bytes(path, gzip.compress(head, mtime=0) + zero_gzip_member() * zero_members)


def corrupt_gzip(path: Path) -> Path:
    """A ``.nii.gz`` with bytes flipped in the middle of the deflate stream."""
    data = bytearray(gzip.compress(nifti_bytes(phantom().astype(np.int16), small_affine()), mtime=0))
    middle = len(data) // 2
    for n in range(middle, middle + 16):
        data[n] ^= 0xA5
    return write_bytes(path, bytes(data))


def bad_crc_gzip(path: Path) -> Path:
    """A ``.nii.gz`` whose deflate data is intact but whose CRC32 trailer is wrong."""
    data = bytearray(gzip.compress(nifti_bytes(phantom().astype(np.int16), small_affine()), mtime=0))
    data[-8:-4] = (zlib.crc32(b"not this") & 0xFFFFFFFF).to_bytes(4, "little")
    return write_bytes(path, bytes(data))


# ----------------------------------------------------------------------------------------- DICOM
def dicom_series(folder: Path, **kwargs) -> list[Path]:
    """A small valid CT series (8x8 pixels, 6 slices, names in slice order) in ``folder``."""
    options = {"shuffle_names": False, **kwargs}
    affine = options.pop("affine", small_affine())
    array = options.pop("array", phantom())
    return write_dicom_series(array, affine, folder, **options)


def enhanced_dicom(path: Path, shape: Sequence[int] = SHAPE, **kwargs) -> Path:
    return write_enhanced_dicom(
        phantom(shape), centered_origin(shape, make_affine((1.0, 1.0, 2.0))), path, **kwargs
    )


def edit_dicom(path: Path, edit) -> Path:
    """Read ``path``, let ``edit(dataset)`` change it, write it back."""
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def pixel_data_offset(path: Path) -> int:
    """File offset of the first byte of the PixelData value."""
    raw = path.read_bytes()
    tag = raw.rfind(b"\xe0\x7f\x10\x00")
    if tag < 0:
        raise ValueError(f"{path} has no PixelData element")
    # explicit VR OB/OW: tag (4) VR (2) reserved (2) length (4)
    return tag + 12


def truncate(path: Path, keep: int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return path


def garbage(path: Path, size: int = 4096, seed: int = 0) -> Path:
    return write_bytes(path, np.random.default_rng(seed).bytes(size))


def list_dir(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def deflated_dicom_bomb(path: Path, inflated_bytes: int, frames: int = 1) -> Path:
    """A Deflated Explicit VR Little Endian file (~1 MB per GB) whose dataset inflates to ``inflated_bytes``.

    The dataset is a CT slice header (with ``frames`` > 1, a multi-frame one placed by
    GridFrameOffsetVector) followed by a PixelData element of zeros. Its raw deflate
    stream is built from one compressed 64 MiB block repeated: after ``Z_FULL_FLUSH`` the compressor
    starts afresh, so every further block of zeros compresses to the same bytes.
    """
    template = dicom_series(path.parent / f".{path.name}.tmp", transfer_syntax=ExplicitVRLittleEndian)[0]
    ds = pydicom.dcmread(template)
    for leftover in template.parent.iterdir():
        leftover.unlink()
    template.parent.rmdir()
    del ds.PixelData
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.GridFrameOffsetVector = [float(f) for f in range(frames)]
    body = io.BytesIO()
    pydicom.filewriter.write_dataset(pydicom.filebase.DicomFileLike(body), ds)  # explicit VR LE
    block = 64 * 2**20
    count = max(1, inflated_bytes // block)
    element = b"\xe0\x7f\x10\x00OB\x00\x00" + (count * block).to_bytes(4, "little")
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflate.compress(body.getvalue() + element) + deflate.flush(zlib.Z_FULL_FLUSH)
    zeros = deflate.compress(bytes(block)) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.flush(zlib.Z_FINISH)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(pydicom.filebase.DicomFileLike(meta), ds.file_meta)
    return write_bytes(path, b"\0" * 128 + b"DICM" + meta.getvalue() + head + zeros * count + tail)
