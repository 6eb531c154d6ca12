"""`load_volume`: any supported scan on disk to a :class:`~medres3d.io.volume.Volume`.

The format is chosen from what the path is, never guessed from content alone:

- a folder: a DICOM series (:func:`medres3d.io.dicom.load_dicom_series`; several series in it
  are an error listing them unless ``series_uid`` picks one);
- ``.nii`` / ``.nii.gz``: NIfTI through nibabel (:func:`medres3d.io.nifti.load_nifti`);
- ``.hdr`` / ``.img`` (``.gz`` too), ``.mgh`` / ``.mgz``, ``.mnc``: Analyze or a NIfTI pair,
  FreeSurfer, MINC1/MINC2 through nibabel (:func:`medres3d.io.nibabel_formats.load_nibabel`);
- ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, ``.gipl``, ``.vtk``, ``.mrc``...: SimpleITK
  (:func:`medres3d.io.itk.load_itk`);
- ``.dcm`` / ``.dicom`` / ``.ima``, a file without extension, or any file with the DICOM
  ``DICM`` magic: one multi-frame DICOM file (:func:`medres3d.io.dicom.load_dicom_file`).

Example:
    >>> import medres3d as mr
    >>> vol = mr.load_volume("scan.nii.gz")          # doctest: +SKIP
    >>> vol = mr.load_volume("dicom/series_folder")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from medres3d.errors import ConfigError, CorruptFileError, UnsupportedFormatError, VolumeLoadError
from medres3d.io.itk import ITK_SUFFIXES, is_itk_path, load_itk
from medres3d.io.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_VOXELS, validate_max_bytes, validate_max_voxels
from medres3d.io.nibabel_formats import NIBABEL_SUFFIXES, is_nibabel_path, load_nibabel
from medres3d.io.nifti import NIFTI_SUFFIXES, is_nifti_path, load_nifti
from medres3d.io.volume import Volume
from medres3d.io.voxels import check_finite, resolve_dtype, validate_nan_policy

DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".ima")
SUPPORTED_FORMATS = (
    f"NIfTI ({', '.join(NIFTI_SUFFIXES)}), Analyze/NIfTI pairs, MGH and MINC "
    f"({', '.join(NIBABEL_SUFFIXES)}), "
    "a DICOM series folder, a multi-frame DICOM file "
    f"({', '.join(DICOM_SUFFIXES)}, no extension, or DICM magic), ITK formats ({', '.join(ITK_SUFFIXES)})"
)


def load_volume(
    path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    strict: bool = False,
    nan_policy: str = "raise",
    series_uid: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    as_4d: bool = False,
    philips_scaling: str = "display",
    resample: str | None = None,
) -> Volume:
    """Load a scan (file or DICOM series folder) as a Volume ``(C, H, W, D)`` with a RAS+ affine.

    Args:
        path: a ``.nii``/``.nii.gz`` file, an Analyze/NIfTI pair (``.hdr``/``.img``), a FreeSurfer
            ``.mgh``/``.mgz`` or MINC ``.mnc`` file, a DICOM series folder, a multi-frame DICOM
            file, or an ITK image (``.nrrd``, ``.mha``, ``.mhd``...).
        dtype: ``"float32"`` (default, rescaling applied: HU for CT), ``"float64"`` or ``"native"``.
        max_voxels: refuse scans whose header claims more voxels, before reading them
            (default :data:`medres3d.io.limits.DEFAULT_MAX_VOXELS`; None: no limit).
        strict: DICOM only: raise SeriesGeometryError on missing slices, uneven spacing or
            conflicting duplicates instead of recording warnings on the Volume.
        nan_policy: ``"raise"`` (default), ``"zero"`` or ``"keep"`` for NaN/Inf voxels.
        series_uid: DICOM only: which series (or volume of a 4D series) to load when a folder,
            or an Enhanced 4D file, holds several.
        as_4d: DICOM only: every volume of a 4D series (diffusion, fMRI, echoes, magnitude/phase,
            Siemens mosaics, the volumes of an Enhanced 4D file) as one channel each, with their
            b-values, b-vectors and echo times in ``meta`` (see
            :func:`medres3d.io.dicom.load_dicom_series`).
        max_bytes: NIfTI, Analyze and MGH: refuse a file whose header needs more bytes read (decompressed for
            ``.nii.gz``: data offset plus stored voxels) than this, before reading them (default
            :data:`medres3d.io.limits.DEFAULT_MAX_BYTES`; None: no limit). A Deflated DICOM file
            is inflated at most to its header plus the pixel bytes the header claims.

        philips_scaling: DICOM only: ``"display"`` (default: RescaleSlope/Intercept, what the
            scanner shows and other readers return) or ``"precise"`` (Philips' floating-point
            values, dcm2niix's default; see ``docs/dicom.md``).
        resample: DICOM only: None (default) or ``"even"``: a tilted or unevenly spaced series
            resampled onto an even orthogonal grid (``resampled-even`` warning, ``meta["resampled"]``).

    Raises:
        VolumeLoadError: the path does not exist (or a subclass below).
        UnsupportedFormatError: an unknown file type (the message lists the supported ones), or
            a supported format holding something that is not a 3D/4D volume.
        CorruptFileError, NotAnImageError, SeriesGeometryError, ResourceLimitError,
        InvalidVoxelsError: from the format's loader, naming the file and the reason.
        ConfigError: an invalid option value.

    Example:
        >>> import numpy as np, nibabel as nib, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "t.nii.gz")
        >>> nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), path)
        >>> load_volume(path).shape
        (1, 4, 5, 6)
    """
    resolve_dtype(dtype)
    validate_nan_policy(nan_policy)
    validate_max_voxels(max_voxels)
    validate_max_bytes(max_bytes)
    path = Path(path)
    if not path.exists():
        raise VolumeLoadError(path, "no such file or directory")
    if not (path.is_dir() or path.is_file()):
        # A FIFO, socket or device named like a scan would block a reader forever.
        raise UnsupportedFormatError(path, "not a regular file or folder (a FIFO, socket or device)")
    other_format = is_nifti_path(path) or is_nibabel_path(path) or is_itk_path(path)
    dicom_file = path.is_file() and not other_format
    if as_4d and not (path.is_dir() or dicom_file):
        raise ConfigError(f"as_4d applies to DICOM only, but {path} is a {path.suffix} file")
    if series_uid is not None and not (path.is_dir() or dicom_file):
        raise ConfigError(f"series_uid applies to DICOM only, but {path} is a {path.suffix} file")

    if path.is_dir():
        from medres3d.io.dicom import load_dicom_series

        volume = load_dicom_series(
            path, series_uid=series_uid, dtype=dtype, max_voxels=max_voxels, strict=strict, as_4d=as_4d,
            philips_scaling=philips_scaling, resample=resample,
        )  # fmt: skip
    elif is_nifti_path(path):
        return load_nifti(
            path, dtype=dtype, max_voxels=max_voxels, nan_policy=nan_policy, max_bytes=max_bytes
        )
    elif is_nibabel_path(path):
        return load_nibabel(
            path, dtype=dtype, max_voxels=max_voxels, nan_policy=nan_policy, max_bytes=max_bytes
        )
    elif is_itk_path(path):
        return load_itk(path, dtype=dtype, max_voxels=max_voxels, nan_policy=nan_policy)
    elif _looks_like_dicom(path):
        from medres3d.io.dicom import load_dicom_file

        volume = load_dicom_file(
            path, series_uid=series_uid, dtype=dtype, max_voxels=max_voxels, strict=strict, as_4d=as_4d,
            philips_scaling=philips_scaling, resample=resample,
        )  # fmt: skip
    else:
        reason = f"unknown file type {path.suffix!r}; supported: {SUPPORTED_FORMATS}"
        raise UnsupportedFormatError(path, reason)
    # DICOM float pixel data (and a NaN rescale slope) can produce non-finite voxels too
    volume.array = check_finite(volume.array, path, nan_policy, volume.warnings)
    return volume


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES or path.suffix == "":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError as err:
        raise CorruptFileError(path, f"cannot open: {err.strerror or err}") from err
