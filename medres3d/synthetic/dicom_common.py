"""Shared pieces of the synthetic DICOM writers: geometry in LPS, common modules, encoding, saving.

The arrays are indexed (i, j, k) with a NIfTI RAS affine. DICOM works in LPS (x and y negated) and
stores each slice as rows x columns with the column index varying fastest along the first
ImageOrientationPatient vector. Slice k is therefore written as ``array[:, :, k].T`` (rows = j,
columns = i), with the row direction (IOP[:3]) along voxel axis i and the column direction
(IOP[3:]) along voxel axis j; PixelSpacing is (spacing along j, spacing along i), i.e.
(distance between rows, distance between columns).

Example:
    >>> from medres3d.synthetic import make_affine
    >>> g = slice_geometry(make_affine((0.5, 0.7, 2.0)), 3)
    >>> g.orientation, g.pixel_spacing, g.positions[1]
    ([-1.0, 0.0, 0.0, 0.0, -1.0, 0.0], [0.7, 0.5], [0.0, 0.0, 2.0])
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from medres3d.errors import ConfigError

_LPS = np.diag([-1.0, -1.0, 1.0])
_J2K_MIN_SIZE = 32

UNCOMPRESSED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
# Lossless compressed syntaxes this module can write: RLE natively (pydicom), JPEG-LS (pyjpegls),
# JPEG 2000 (pylibjpeg-openjpeg), JPEG lossless process 14 SV1 (python-gdcm).
COMPRESSED_SYNTAXES = (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1)
SUPPORTED_SYNTAXES = UNCOMPRESSED_SYNTAXES + COMPRESSED_SYNTAXES


@dataclass(frozen=True)
class SliceGeometry:
    """DICOM plane geometry (LPS, mm) of the k slices of a volume with a given RAS affine."""

    orientation: list[float]  # ImageOrientationPatient: row direction, then column direction
    pixel_spacing: list[float]  # PixelSpacing: (between rows, between columns)
    positions: list[list[float]]  # ImagePositionPatient of each slice k
    normal: np.ndarray  # unit slice normal (row x column), LPS
    spacing_between_slices: float  # distance between consecutive slice planes along the normal
    tilt_deg: float  # angle between the stacking direction and the normal (gantry tilt)

    def slice_location(self, k: int) -> float:
        """SliceLocation of slice k: its position projected on the normal (mm)."""
        return float(np.dot(self.positions[k], self.normal))


def _clean(values: np.ndarray) -> list[float]:
    # Round away float noise (1e-17) so that the decimal strings stay short and exact.
    return [float(v) + 0.0 for v in np.round(values, 6)]


def slice_geometry(affine: np.ndarray, num_slices: int) -> SliceGeometry:
    """Slice geometry of a RAS affine (see the module docstring for the conventions).

    Example:
        >>> from medres3d.synthetic import make_affine
        >>> slice_geometry(make_affine(orientation="coronal"), 1).orientation
        [-1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    """
    aff = np.asarray(affine, dtype=float)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ConfigError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    lps = _LPS @ aff[:3, :3]
    lengths = np.linalg.norm(lps, axis=0)
    if np.any(lengths <= 0) or abs(np.linalg.det(lps)) < 1e-9 * float(np.prod(lengths)):
        raise ConfigError("affine is singular: its three direction columns must be independent")
    row, col = lps[:, 0] / lengths[0], lps[:, 1] / lengths[1]
    if abs(float(np.dot(row, col))) > 1e-4:
        raise ConfigError(
            "affine columns i and j must be perpendicular (a DICOM slice is a rectangular grid); "
            f"their cosine is {float(np.dot(row, col)):.4f}"
        )
    normal = np.cross(row, col)
    step = lps[:, 2]
    between = abs(float(np.dot(step, normal)))
    tilt = float(np.degrees(np.arccos(min(1.0, between / lengths[2]))))
    origin = _LPS @ aff[:3, 3]
    positions = [_clean(origin + k * step) for k in range(num_slices)]
    return SliceGeometry(
        orientation=_clean(np.concatenate([row, col])),
        pixel_spacing=_clean(np.array([lengths[1], lengths[0]])),
        positions=positions,
        normal=normal,
        spacing_between_slices=round(between, 6),
        tilt_deg=round(tilt, 6),
    )


def check_transfer_syntax(transfer_syntax: str) -> UID:
    """The transfer syntax as a UID, or a ConfigError listing the supported ones."""
    uid = UID(str(transfer_syntax))
    if uid not in SUPPORTED_SYNTAXES:
        names = ", ".join(f"{s.name} ({s})" for s in SUPPORTED_SYNTAXES)
        raise ConfigError(f"transfer_syntax {uid!r} cannot be written; supported: {names}")
    return uid


def stored_values(
    values: np.ndarray,
    slope: float,
    intercept: float | np.ndarray,
    pixel_representation: int | None,
    bits_stored: int | None,
) -> tuple[np.ndarray, int, int]:
    """Stored pixel values ``rint((values - intercept) / slope)`` in the smallest fitting encoding.

    ``intercept`` may be an array broadcast against ``values`` (one per frame). Returns the stored
    array (uint16 or int16), the PixelRepresentation and the BitsStored.
    """
    if not (np.isfinite(slope) and slope != 0 and np.all(np.isfinite(intercept))):
        raise ConfigError(
            f"rescale slope must be finite and non-zero, intercept finite: {slope!r}, {intercept!r}"
        )
    stored = np.rint((np.asarray(values, dtype=np.float64) - intercept) / slope)
    lo, hi = (float(stored.min()), float(stored.max())) if stored.size else (0.0, 0.0)
    if pixel_representation is None:
        pixel_representation = 1 if lo < 0 else 0
    if pixel_representation not in (0, 1):
        raise ConfigError(
            f"pixel_representation must be 0 (unsigned) or 1 (signed), got {pixel_representation!r}"
        )
    if bits_stored is None:
        lo12, hi12 = _range(12, pixel_representation)
        bits_stored = 12 if lo12 <= lo and hi <= hi12 else 16
    if not 8 <= bits_stored <= 16:
        raise ConfigError(f"bits_stored must be between 8 and 16, got {bits_stored!r}")
    vmin, vmax = _range(bits_stored, pixel_representation)
    if lo < vmin or hi > vmax:
        raise ConfigError(
            f"stored values span [{lo:.0f}, {hi:.0f}], outside [{vmin}, {vmax}] "
            f"for bits_stored={bits_stored}, "
            f"pixel_representation={pixel_representation}; change rescale_slope/intercept or the encoding"
        )
    return stored.astype(np.int16 if pixel_representation else np.uint16), pixel_representation, bits_stored


def _range(bits: int, signed: int) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def now_strings() -> tuple[str, str]:
    """Today's DICOM date (YYYYMMDD) and time (HHMMSS)."""
    now = dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def patient_study_series(
    ds: Dataset,
    *,
    modality: str,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    series_number: int,
    description: str,
    when: tuple[str, str] | None = None,
) -> None:
    """Fill the Patient, General Study, General Series and General Equipment modules.

    ``when``: the study's (date, time), the same for every file of a series (default: now). A
    series whose files straddle a second would otherwise carry two StudyTimes, which dcm2niix
    takes for two studies.
    """
    date, time = when or now_strings()
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "medres3d synthetic study"
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.Manufacturer = "medres3d synthetic"
    ds.SpecificCharacterSet = "ISO_IR 100"


def image_pixel_module(ds: Dataset, stored: np.ndarray, pixel_representation: int, bits_stored: int) -> None:
    """Image Pixel module for 16-bit monochrome frames; ``stored`` is (rows, cols) or (frames, rows, cols)."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = pixel_representation
    ds.PixelData = np.ascontiguousarray(stored).astype("<i2" if pixel_representation else "<u2").tobytes()


def save(ds: Dataset, path: str | os.PathLike[str], transfer_syntax: UID, sop_class_uid: str) -> Path:
    """Add the file meta, encode the pixel data for ``transfer_syntax`` and write a Part 10 file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDRES3D_SYNTH"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if transfer_syntax == JPEGLosslessSV1:
        _save_with_gdcm(ds, out, transfer_syntax)
        return out
    if transfer_syntax == JPEG2000Lossless and min(ds.Rows, ds.Columns) < _J2K_MIN_SIZE:
        raise ConfigError(
            f"JPEG 2000 encoding needs rows and columns >= {_J2K_MIN_SIZE} (openjpeg uses 6 resolution "
            f"levels), got {ds.Rows} x {ds.Columns}"
        )
    if transfer_syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        try:
            ds.compress(transfer_syntax, generate_instance_uid=False)
        except (RuntimeError, ValueError, ImportError) as err:
            raise ConfigError(f"cannot encode {transfer_syntax.name} here: {err}") from err
    else:
        meta.TransferSyntaxUID = transfer_syntax
    ds.save_as(out, enforce_file_format=True)
    return out


def _save_with_gdcm(ds: Dataset, out: Path, transfer_syntax: UID) -> None:
    # pydicom has no JPEG lossless encoder; python-gdcm transcodes an uncompressed file.
    try:
        import gdcm
    except ImportError as err:
        raise ConfigError(
            f"writing {transfer_syntax.name} needs python-gdcm, which is not installed"
        ) from err
    fd, tmp_name = tempfile.mkstemp(suffix=".dcm", dir=out.parent)
    os.close(fd)
    try:
        ds.save_as(tmp_name, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(tmp_name)
        if not reader.Read():
            raise ConfigError(f"python-gdcm could not read back {tmp_name} to encode {transfer_syntax.name}")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise ConfigError(f"python-gdcm failed to encode {transfer_syntax.name}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(out))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise ConfigError(f"python-gdcm could not write {out}")
    finally:
        os.unlink(tmp_name)


def new_uid() -> str:
    """A fresh DICOM UID (pydicom's generator, random suffix)."""
    return str(generate_uid())
