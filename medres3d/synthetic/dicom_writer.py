"""Write synthetic volumes as DICOM: classic single-frame series, Enhanced multi-frame files, scouts.

Geometry conventions (RAS affine in, LPS tags out, slice k = ``array[:, :, k].T``) are explained in
:mod:`medres3d.synthetic.dicom_common`.

Example:
    >>> import tempfile
    >>> from medres3d.synthetic import ct_phantom, make_affine, write_dicom_series
    >>> files = write_dicom_series(ct_phantom((32, 32, 8)), make_affine((1, 1, 2)), tempfile.mkdtemp())
    >>> len(files)
    8
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from medres3d.errors import ConfigError
from medres3d.synthetic.dicom_common import (
    SliceGeometry,
    check_transfer_syntax,
    image_pixel_module,
    new_uid,
    now_strings,
    patient_study_series,
    save,
    slice_geometry,
    stored_values,
)

_MODALITIES = ("CT", "MR")


def _check_volume(array: np.ndarray, modality: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ConfigError(f"array must be 3D (i, j, k), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("array holds NaN or Inf values, which DICOM integer pixels cannot store")
    if modality not in _MODALITIES:
        raise ConfigError(f"modality must be one of {_MODALITIES}, got {modality!r}")
    return arr


def _default_intercept(modality: str, intercept: float | None) -> float:
    if intercept is not None:
        return float(intercept)
    return -1024.0 if modality == "CT" else 0.0


def _acquisition_module(ds: Dataset, modality: str) -> None:
    # Typical acquisition parameters, so tools that expect them find plausible values.
    ds.PatientPosition = "HFS"
    if modality == "CT":
        ds.KVP = 120
        ds.ConvolutionKernel = "STANDARD"
        ds.WindowCenter, ds.WindowWidth = 40, 400
    else:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = 12.0
        ds.RepetitionTime = 500.0
        ds.MagneticFieldStrength = 1.5
        ds.ImagingFrequency = 63.87
        ds.ImagedNucleus = "1H"


def write_dicom_series(
    array_hu: np.ndarray,
    affine: np.ndarray,
    folder: str | os.PathLike[str],
    *,
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str = "PHANTOM",
    series_number: int = 1,
    description: str = "Synthetic phantom",
    shuffle_names: bool = True,
    shuffle_instance_numbers: bool = False,
    rescale_slope: float = 1.0,
    rescale_intercept: float | None = None,
    pixel_representation: int | None = None,
    bits_stored: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    skip_slices: Iterable[int] = (),
    duplicate_slices: Iterable[int] = (),
    echo_number: int | None = None,
    acquisition_number: int | None = None,
    file_prefix: str = "",
    file_suffix: str = ".dcm",
    extra_tags: Mapping[str, Any] | None = None,
    seed: int = 0,
    first_instance_number: int = 1,
) -> list[Path]:
    """Write a volume as a classic single-frame DICOM series (one CT or MR Image Storage file per k).

    Stored pixels are ``rint((value - intercept) / slope)``; a reader that applies the rescale gets the
    values back to within ``slope / 2``.

    Args:
        array_hu: 3D array (i, j, k): HU for CT, signal for MR.
        affine: 4x4 RAS voxel-to-world affine; columns i and j must be perpendicular. A sheared k column
            (see ``make_affine(tilt_deg=...)``) gives a tilted series with GantryDetectorTilt set.
        folder: where the files go (created if needed; other files there are left alone).
        modality: "CT" or "MR".
        series_uid, study_uid, frame_of_reference_uid: fresh UIDs when None (pass the same study and
            frame of reference to write several series of one study).
        patient_id, series_number, description: identifying tags.
        shuffle_names: random file names (uuid hex) instead of ``{file_prefix}{k:04d}{file_suffix}``.
        shuffle_instance_numbers: InstanceNumbers as a random permutation instead of following k.
        rescale_slope, rescale_intercept: Rescale Slope/Intercept (intercept defaults to -1024 for CT,
            0 for MR; MR files carry the rescale tags only when they are not the identity).
        pixel_representation: 0 unsigned, 1 signed; by default unsigned unless a stored value is negative.
        bits_stored: 8..16; by default 12 when the stored values fit in 12 bits, else 16.
        transfer_syntax: Explicit/Implicit VR Little Endian, Deflated, RLE Lossless, JPEG-LS Lossless,
            JPEG 2000 Lossless or JPEG Lossless SV1 (others raise ConfigError).
        skip_slices: slice indices k not written (a missing slice).
        duplicate_slices: slice indices k written a second time, with a new SOPInstanceUID and
            InstanceNumber but the same position (a re-sent slice).
        echo_number, acquisition_number: EchoNumbers / AcquisitionNumber tags, when given.
        file_prefix, file_suffix: parts of the file names.
        extra_tags: keyword -> value set on every file last (e.g. a vendor quirk under test).
        seed: seeds the InstanceNumber shuffle.
        first_instance_number: the InstanceNumber of the first file (the volumes of a 4D series
            number their files on, as scanners do).

    Returns:
        The paths written: slices in k order (skipped ones absent), then the duplicates.

    Example:
        >>> import tempfile
        >>> from medres3d.synthetic import make_affine
        >>> folder = tempfile.mkdtemp()
        >>> files = write_dicom_series(np.zeros((8, 8, 4)), make_affine(), folder, skip_slices=[2])
        >>> len(files)
        3
    """
    arr = _check_volume(array_hu, modality)
    syntax = check_transfer_syntax(transfer_syntax)
    intercept = _default_intercept(modality, rescale_intercept)
    num_slices = arr.shape[2]
    geometry = slice_geometry(affine, num_slices)
    stored, representation, bits = stored_values(
        arr, rescale_slope, intercept, pixel_representation, bits_stored
    )
    skip = _check_indices(skip_slices, num_slices, "skip_slices")
    dups = [k for k in _check_indices(duplicate_slices, num_slices, "duplicate_slices") if k not in skip]
    kept = [k for k in range(num_slices) if k not in skip]
    order = kept + dups
    instance_numbers = np.arange(first_instance_number, first_instance_number + len(order))
    if shuffle_instance_numbers:
        instance_numbers = np.random.default_rng(seed).permutation(instance_numbers)

    study_uid = study_uid or new_uid()
    series_uid = series_uid or new_uid()
    frame_of_reference_uid = frame_of_reference_uid or new_uid()
    out_dir = Path(folder)
    written = []
    when = now_strings()  # one study date and time for the whole series
    for n, k in enumerate(order):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        ds.SOPInstanceUID = new_uid()
        patient_study_series(
            ds,
            modality=modality,
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            series_number=series_number,
            description=description,
            when=when,
        )
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = (
            ["ORIGINAL", "PRIMARY", "AXIAL"] if modality == "CT" else ["ORIGINAL", "PRIMARY", "M", "ND"]
        )
        ds.InstanceNumber = int(instance_numbers[n])
        _acquisition_module(ds, modality)
        _plane_module(ds, geometry, k)
        if geometry.tilt_deg and modality == "CT":
            ds.GantryDetectorTilt = geometry.tilt_deg
        if modality == "CT" or (rescale_slope, intercept) != (1.0, 0.0):
            ds.RescaleIntercept = intercept
            ds.RescaleSlope = rescale_slope
            ds.RescaleType = "HU" if modality == "CT" else "US"
        if echo_number is not None:
            ds.EchoNumbers = echo_number
        if acquisition_number is not None:
            ds.AcquisitionNumber = acquisition_number
        image_pixel_module(ds, stored[:, :, k].T, representation, bits)
        for keyword, value in (extra_tags or {}).items():
            setattr(ds, keyword, value)
        if shuffle_names:
            name = uuid.uuid4().hex[:16]
        else:
            name = f"{k:04d}" if n < len(kept) else f"{k:04d}_duplicate"
        written.append(save(ds, out_dir / f"{file_prefix}{name}{file_suffix}", syntax, ds.SOPClassUID))
    return written


def _check_indices(indices: Iterable[int], num_slices: int, name: str) -> list[int]:
    out = sorted({int(k) for k in indices})
    bad = [k for k in out if not 0 <= k < num_slices]
    if bad:
        raise ConfigError(f"{name} must be slice indices in [0, {num_slices - 1}], got {bad}")
    return out


def _plane_module(ds: Dataset, geometry: SliceGeometry, k: int) -> None:
    ds.ImagePositionPatient = geometry.positions[k]
    ds.ImageOrientationPatient = geometry.orientation
    ds.PixelSpacing = geometry.pixel_spacing
    ds.SliceThickness = geometry.spacing_between_slices
    ds.SpacingBetweenSlices = geometry.spacing_between_slices
    ds.SliceLocation = round(geometry.slice_location(k), 6)


def write_enhanced_dicom(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike[str],
    *,
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient_id: str = "PHANTOM",
    description: str = "Synthetic enhanced phantom",
    rescale_slope: float = 1.0,
    rescale_intercept: float | None = None,
    per_frame_rescale: bool = False,
    shuffle_frames: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
) -> Path:
    """Write a volume as one Enhanced CT / Enhanced MR Image Storage multi-frame file.

    Frame n holds slice ``k = frame_order[n]``: with ``shuffle_frames`` the frames are stored in a random
    order (readers must sort by the per-frame PlanePositionSequence). Pixel measures and orientation are
    in the SharedFunctionalGroupsSequence; positions (and with ``per_frame_rescale`` a different
    RescaleIntercept per frame) in the PerFrameFunctionalGroupsSequence.

    Args:
        array, affine, modality, series_uid, study_uid, patient_id, description, rescale_slope,
        rescale_intercept, transfer_syntax: as in :func:`write_dicom_series`.
        path: the file to write.
        per_frame_rescale: give frame n the intercept ``base - 10 * (n % 3)`` (pixel values compensate).
        shuffle_frames: store the frames in a random order (seeded by ``seed``).

    Example:
        >>> import tempfile, os, pydicom
        >>> from medres3d.synthetic import make_affine
        >>> path = os.path.join(tempfile.mkdtemp(), "e.dcm")
        >>> p = write_enhanced_dicom(np.zeros((8, 8, 5)), make_affine(), path)
        >>> int(pydicom.dcmread(p).NumberOfFrames)
        5
    """
    arr = _check_volume(array, modality)
    syntax = check_transfer_syntax(transfer_syntax)
    base = _default_intercept(modality, rescale_intercept)
    num_frames = arr.shape[2]
    geometry = slice_geometry(affine, num_frames)
    order = np.arange(num_frames)
    if shuffle_frames:
        order = np.random.default_rng(seed).permutation(num_frames)
    intercepts = np.array([base - 10.0 * (n % 3) if per_frame_rescale else base for n in range(num_frames)])
    values = np.stack([arr[:, :, k].T for k in order])
    stacked, signed, _ = stored_values(values, rescale_slope, intercepts[:, None, None], None, 16)

    ds = Dataset()
    ds.SOPClassUID = EnhancedCTImageStorage if modality == "CT" else EnhancedMRImageStorage
    ds.SOPInstanceUID = new_uid()
    patient_study_series(
        ds,
        modality=modality,
        patient_id=patient_id,
        study_uid=study_uid or new_uid(),
        series_uid=series_uid or new_uid(),
        series_number=1,
        description=description,
    )
    ds.FrameOfReferenceUID = new_uid()
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.PatientPosition = "HFS"
    ds.NumberOfFrames = num_frames
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    stack_id_tag, in_stack_tag = 0x00209056, 0x00209057
    dim_uid = new_uid()
    ds.DimensionOrganizationSequence = [Dataset()]
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = dim_uid
    ds.DimensionIndexSequence = []
    for tag in (stack_id_tag, in_stack_tag):
        item = Dataset()
        item.DimensionOrganizationUID = dim_uid
        item.DimensionIndexPointer = tag
        item.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
        ds.DimensionIndexSequence.append(item)

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = geometry.pixel_spacing
    measures.SliceThickness = geometry.spacing_between_slices
    measures.SpacingBetweenSlices = geometry.spacing_between_slices
    shared.PixelMeasuresSequence = [measures]
    plane = Dataset()
    plane.ImageOrientationPatient = geometry.orientation
    shared.PlaneOrientationSequence = [plane]
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    if modality == "CT":
        shared.CTImageFrameTypeSequence = [frame_type]
    else:
        shared.MRImageFrameTypeSequence = [frame_type]
    if not per_frame_rescale and (modality == "CT" or (rescale_slope, base) != (1.0, 0.0)):
        shared.PixelValueTransformationSequence = [_rescale_item(rescale_slope, base, modality)]
    ds.SharedFunctionalGroupsSequence = [shared]

    per_frame = []
    for n, k in enumerate(order):
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = geometry.positions[k]
        item.PlanePositionSequence = [position]
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = int(k) + 1
        content.DimensionIndexValues = [1, int(k) + 1]
        item.FrameContentSequence = [content]
        if per_frame_rescale:
            item.PixelValueTransformationSequence = [_rescale_item(rescale_slope, intercepts[n], modality)]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    image_pixel_module(ds, stacked, signed, 16)
    return save(ds, path, syntax, ds.SOPClassUID)


def _rescale_item(slope: float, intercept: float, modality: str) -> Dataset:
    item = Dataset()
    item.RescaleIntercept = intercept
    item.RescaleSlope = slope
    item.RescaleType = "HU" if modality == "CT" else "US"
    return item


def write_localizer(
    folder: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str = "PHANTOM",
    series_number: int = 100,
    instance_number: int = 1,
    plane: str = "coronal",
    size: Sequence[int] = (64, 96),
    pixel_spacing: float = 4.0,
    file_name: str | None = None,
) -> Path:
    """Write a 2D CT scout (ImageType ORIGINAL\\PRIMARY\\LOCALIZER) as one file.

    Localizers often share the SeriesInstanceUID of the series planned on them: pass ``series_uid``
    to reproduce that. The image is a projection of a CT phantom, in a coronal or sagittal plane,
    orthogonal to the usual axial series.

    Args:
        folder: where to write.
        series_uid, study_uid, frame_of_reference_uid, patient_id, series_number, instance_number: tags.
        plane: "coronal" (rows head to feet, columns right to left) or "sagittal".
        size: (columns, rows) of the image.
        pixel_spacing: mm per pixel, both directions.
        file_name: defaults to a random name ending in ``.dcm``.

    Example:
        >>> import tempfile, pydicom
        >>> list(pydicom.dcmread(write_localizer(tempfile.mkdtemp())).ImageType)
        ['ORIGINAL', 'PRIMARY', 'LOCALIZER']
    """
    from medres3d.synthetic.phantoms import ct_phantom

    if plane not in ("coronal", "sagittal"):
        raise ConfigError(f"plane must be 'coronal' or 'sagittal', got {plane!r}")
    cols, rows = (int(s) for s in size)
    if cols < 4 or rows < 4:
        raise ConfigError(f"size must be two integers >= 4 (columns, rows), got {tuple(size)!r}")
    volume = ct_phantom((cols, 16, rows) if plane == "coronal" else (16, cols, rows), noise_hu=0.0)
    # Attenuation summed through the body (HU + 1000 is proportional to density), as on a projection.
    projection = (volume + 1000.0).sum(axis=1 if plane == "coronal" else 0)
    projection = 4095.0 * projection / max(float(projection.max()), 1.0)
    # Row direction LPS +x (coronal) or -y (sagittal), column direction towards the feet: flip both
    # voxel axes of the (right, superior)-indexed projection to match.
    image = np.rint(projection[::-1, ::-1].T).astype(np.uint16)

    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = new_uid()
    patient_study_series(
        ds,
        modality="CT",
        patient_id=patient_id,
        study_uid=study_uid or new_uid(),
        series_uid=series_uid or new_uid(),
        series_number=series_number,
        description="Scout",
    )
    ds.FrameOfReferenceUID = frame_of_reference_uid or new_uid()
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.InstanceNumber = instance_number
    ds.PatientPosition = "HFS"
    ds.KVP = 120
    row_dir = [1.0, 0.0, 0.0] if plane == "coronal" else [0.0, -1.0, 0.0]
    ds.ImageOrientationPatient = [*row_dir, 0.0, 0.0, -1.0]
    half_width = (cols - 1) * pixel_spacing / 2.0
    top = (rows - 1) * pixel_spacing / 2.0
    ds.ImagePositionPatient = [-half_width, 0.0, top] if plane == "coronal" else [0.0, half_width, top]
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.SliceThickness = 1.0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0.0, 1.0, "US"
    image_pixel_module(ds, image, 0, 12)
    name = file_name or f"{uuid.uuid4().hex[:16]}.dcm"
    return save(ds, Path(folder) / name, ExplicitVRLittleEndian, CTImageStorage)
