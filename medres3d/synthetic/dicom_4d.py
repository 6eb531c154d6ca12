"""Synthetic 4D MR series: Siemens-like mosaics and multi-volume single-frame series.

- :func:`write_siemens_mosaic`: one mosaic file per volume, as Siemens stores EPI (fMRI,
  diffusion): the slices tiled row by row on a ``ceil(sqrt(n))`` square grid, a CSA image header
  (0029,1010) with NumberOfImagesInMosaic, SliceNormalVector, B_value and
  DiffusionGradientDirection, the same values in the SIEMENS MR HEADER block (0019,10xx), and
  ImagePositionPatient at the corner of the whole mosaic (Siemens' convention, which readers
  correct for).
- :func:`write_enhanced_4d`: several volumes as the frames of one Enhanced MR file, told apart per
  frame by MRDiffusionSequence, MREchoSequence, TemporalPositionIndex and FrameType.
- :func:`write_multivolume_series`: several volumes as one single-frame series (one file per
  slice and volume) under one SeriesInstanceUID, told apart by DiffusionBValue /
  DiffusionGradientOrientation, EchoTime and EchoNumbers, or ImageType (magnitude/phase).

The arrays are indexed (i, j, k) with a NIfTI RAS affine, as every writer here.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from medres3d.synthetic import make_affine
    >>> vols = [np.full((8, 8, 5), v, np.float32) for v in (100, 50)]
    >>> files = write_siemens_mosaic(vols, make_affine((2, 2, 3)), tempfile.mkdtemp(), b_values=[0, 1000],
    ...                              gradients=[(0, 0, 0), (1, 0, 0)])
    >>> len(files)
    2
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from medres3d.errors import ConfigError
from medres3d.synthetic.dicom_common import (
    image_pixel_module,
    new_uid,
    now_strings,
    patient_study_series,
    save,
    slice_geometry,
)
from medres3d.synthetic.dicom_writer import write_dicom_series

Vector = Sequence[float]


def _csa2(tags: dict[str, tuple[str, list[str]]]) -> bytes:
    """A CSA2 ("SV10") header: per tag a 64-byte name, VM, VR, and its items as text."""
    out = bytearray(b"SV10\x04\x03\x02\x01" + struct.pack("<2I", len(tags), 77))
    for name, (vr, values) in tags.items():
        out += struct.pack("<64si4s3i", name.encode(), len(values), vr.encode(), 0, len(values), 77)
        for value in values:
            item = value.encode() + b"\x00"
            out += struct.pack("<4i", len(item), len(item), 77, len(item)) + item
            out += b"\x00" * (-len(item) % 4)
    return bytes(out)


def _check_volumes(volumes: Sequence[np.ndarray], count: int | None, name: str) -> list[np.ndarray]:
    arrays = [np.asarray(v, dtype=np.float64) for v in volumes]
    if not arrays or any(a.ndim != 3 or a.shape != arrays[0].shape for a in arrays):
        shapes = [a.shape for a in arrays]
        raise ConfigError(f"volumes must be one or more 3D arrays of one shape, got {shapes}")
    if count is not None and count != len(arrays):
        raise ConfigError(f"{name} must have one entry per volume ({len(arrays)}), got {count}")
    return arrays


def write_siemens_mosaic(
    volumes: Sequence[np.ndarray],
    affine: np.ndarray,
    folder: str | os.PathLike[str],
    *,
    b_values: Sequence[float] | None = None,
    gradients: Sequence[Vector] | None = None,
    repetition_time: float = 2000.0,
    echo_time: float = 30.0,
    series_uid: str | None = None,
    claimed_images: int | None = None,
    csa: bool = True,
) -> list[Path]:
    """Write each volume as one Siemens mosaic MR file (uint16 stored values, no rescale).

    Args:
        volumes: 3D arrays (i, j, k) of one shape; values 0..65535 (rounded).
        affine: 4x4 RAS affine of every volume.
        folder: where the files go (``mosaic_0001.dcm``...).
        b_values, gradients: per volume, diffusion b-value and unit gradient direction (DICOM LPS);
            None: not a diffusion series.
        repetition_time, echo_time: RepetitionTime / EchoTime (ms).
        series_uid: a fresh one when None.
        claimed_images: NumberOfImagesInMosaic to write instead of the true number (a bad input).
        csa: write the CSA image header (False: only (0019,100A), a stripped export).

    Returns:
        The files, in volume order.

    Example:
        >>> import tempfile
        >>> from medres3d.synthetic import make_affine
        >>> write_siemens_mosaic([np.zeros((4, 4, 3))], make_affine(), tempfile.mkdtemp())[0].name
        'mosaic_0001.dcm'
    """
    arrays = _check_volumes(volumes, None, "volumes")
    for name, values in (("b_values", b_values), ("gradients", gradients)):
        if values is not None and len(values) != len(arrays):
            raise ConfigError(f"{name} must have one entry per volume ({len(arrays)}), got {len(values)}")
    cols, rows, n = arrays[0].shape  # tiles: rows = j, columns = i
    geometry = slice_geometry(affine, n)
    tiles = math.ceil(math.sqrt(n))
    iop = np.asarray(geometry.orientation, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    ps = geometry.pixel_spacing
    pos0 = np.asarray(geometry.positions[0], dtype=np.float64)
    # Siemens puts the mosaic's corner in ImagePositionPatient: the first slice's position moved
    # back by half the extra mosaic size (what nibabel's MosaicWrapper.image_position undoes).
    corner = pos0 - col_dir * ps[0] * (rows * tiles - rows) / 2 - row_dir * ps[1] * (cols * tiles - cols) / 2
    step = (np.asarray(geometry.positions[1]) - pos0) if n > 1 else geometry.normal
    normal = step / np.linalg.norm(step)
    series_uid = series_uid or new_uid()
    study_uid, frame_uid = new_uid(), new_uid()
    date, time = now_strings()
    out = Path(folder)
    written = []
    for v, array in enumerate(arrays):
        mosaic = np.zeros((rows * tiles, cols * tiles), dtype=np.uint16)
        for k in range(n):
            r, c = divmod(k, tiles)
            mosaic[r * rows : (r + 1) * rows, c * cols : (c + 1) * cols] = np.clip(
                np.rint(array[:, :, k].T), 0, 65535
            )
        ds = Dataset()
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = new_uid()
        patient_study_series(
            ds, modality="MR", patient_id="PHANTOM", study_uid=study_uid, series_uid=series_uid,
            series_number=5, description="ep2d synthetic mosaic",
        )  # fmt: skip
        ds.Manufacturer = "SIEMENS"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION" if b_values is not None else "M", "ND", "MOSAIC"]
        ds.InstanceNumber = ds.AcquisitionNumber = v + 1
        ds.AcquisitionTime = f"{120000 + v * repetition_time / 1000:013.6f}"
        ds.StudyDate = ds.SeriesDate = date
        ds.StudyTime = ds.SeriesTime = time  # one study time, even when writing crosses a second
        ds.RepetitionTime, ds.EchoTime = repetition_time, echo_time
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "EP", "SK", "2D"
        ds.ImagePositionPatient = [round(float(x), 6) for x in corner]
        ds.ImageOrientationPatient = geometry.orientation
        ds.PixelSpacing = ps
        ds.SliceThickness = ds.SpacingBetweenSlices = round(geometry.spacing_between_slices, 6)
        count = claimed_images if claimed_images is not None else n
        siemens = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        siemens.add_new(0x0A, "US", count)
        csa_tags = {
            "NumberOfImagesInMosaic": ("US", [str(count)]),
            "AcquisitionMatrixText": ("SH", [f"{rows}p*{cols}"]),
            "SliceNormalVector": ("FD", [f"{x:.8f}" for x in normal]),
        }
        if b_values is not None:
            gradient = [float(x) for x in (gradients[v] if gradients is not None else (0, 0, 0))]
            siemens.add_new(0x0C, "IS", int(b_values[v]))
            siemens.add_new(0x0E, "FD", gradient)
            csa_tags["B_value"] = ("IS", [str(int(b_values[v]))])
            csa_tags["DiffusionGradientDirection"] = ("FD", [f"{x:.8f}" for x in gradient])
        if csa:
            ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", _csa2(csa_tags))
        image_pixel_module(ds, mosaic, 0, 16)
        written.append(save(ds, out / f"mosaic_{v + 1:04d}.dcm", ExplicitVRLittleEndian, MRImageStorage))
    return written


def write_multivolume_series(
    volumes: Sequence[np.ndarray],
    affine: np.ndarray,
    folder: str | os.PathLike[str],
    *,
    b_values: Sequence[float] | None = None,
    gradients: Sequence[Vector] | None = None,
    echo_times: Sequence[float] | None = None,
    image_kinds: Sequence[str] | None = None,
    series_uid: str | None = None,
    diffusion_tags: str = "standard",
) -> list[Path]:
    """Write several volumes as one single-frame MR series, one file per slice and volume.

    Args:
        volumes: 3D arrays (i, j, k) of one shape (values kept to within 0.5 after rounding).
        affine: 4x4 RAS affine of every volume.
        folder: where the files go (``v01_0000.dcm``: volume, then slice).
        b_values, gradients: DiffusionBValue and DiffusionGradientOrientation (LPS) per volume.
        echo_times: EchoTime per volume (EchoNumbers follows the rank of the echo time).
        image_kinds: "M", "P", "R" or "I" per volume (ImageType's third value).
        series_uid: a fresh one when None.
        diffusion_tags: where the b-values and gradients go: "standard" (0018,9087/9089),
            "philips" (Philips' private (2001,1003) and (2005,10B0/B1/B2) only, Manufacturer
            Philips, as a Philips DWI export without the standard tags) or "both".

    Returns:
        Every file written, volume by volume.

    Example:
        >>> import tempfile
        >>> from medres3d.synthetic import make_affine
        >>> vols = [np.zeros((4, 4, 3)), np.ones((4, 4, 3))]
        >>> len(write_multivolume_series(vols, make_affine(), tempfile.mkdtemp(), image_kinds=["M", "P"]))
        6
    """
    arrays = _check_volumes(volumes, None, "volumes")
    for name, values in (("b_values", b_values), ("gradients", gradients), ("echo_times", echo_times),
                         ("image_kinds", image_kinds)):  # fmt: skip
        if values is not None and len(values) != len(arrays):
            raise ConfigError(f"{name} must have one entry per volume ({len(arrays)}), got {len(values)}")
    if diffusion_tags not in ("standard", "philips", "both"):
        raise ConfigError(f"diffusion_tags must be 'standard', 'philips' or 'both', got {diffusion_tags!r}")
    series_uid = series_uid or new_uid()
    study_uid, frame_uid = new_uid(), new_uid()
    echo_rank = sorted(set(echo_times)) if echo_times is not None else []
    # one study and series date/time for every volume: writing may cross a second, and a
    # converter (dcm2niix) takes a changed StudyTime for another study
    date, time = now_strings()
    written: list[Path] = []
    for v, array in enumerate(arrays):
        tags: dict[str, object] = {
            "AcquisitionTime": f"{120000 + v:06d}.000000",
            "StudyDate": date, "SeriesDate": date, "StudyTime": time, "SeriesTime": time,
        }  # fmt: skip
        if b_values is not None:
            tags["DiffusionBValue"] = float(b_values[v])
            tags["DiffusionGradientOrientation"] = [
                float(x) for x in (gradients[v] if gradients is not None else (0, 0, 0))
            ]
        if echo_times is not None:
            tags["EchoTime"] = float(echo_times[v])
        if image_kinds is not None:
            tags["ImageType"] = ["ORIGINAL", "PRIMARY", image_kinds[v], "ND"]
        written += write_dicom_series(
            array, affine, folder, modality="MR", series_uid=series_uid, study_uid=study_uid,
            frame_of_reference_uid=frame_uid, description="synthetic 4D", shuffle_names=False,
            file_prefix=f"v{v + 1:02d}_", extra_tags=tags, first_instance_number=v * array.shape[2] + 1,
            echo_number=echo_rank.index(echo_times[v]) + 1 if echo_times is not None else None,
            pixel_representation=1 if image_kinds is not None else None, bits_stored=16,
        )  # fmt: skip
    if b_values is not None and diffusion_tags != "standard":
        for path in written:
            _philips_diffusion(path, keep_standard=diffusion_tags == "both")
    return written


def _philips_diffusion(path: Path, *, keep_standard: bool) -> None:
    """Move a file's standard diffusion tags into Philips' private blocks (rewritten in place)."""
    ds = pydicom.dcmread(path)
    ds.Manufacturer = "Philips Medical Systems"
    b_value = float(ds.DiffusionBValue)
    gradient = [float(x) for x in ds.DiffusionGradientOrientation]
    if not keep_standard:
        del ds.DiffusionBValue, ds.DiffusionGradientOrientation
    ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x03, "FL", b_value)
    block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
    for element, value in zip((0xB0, 0xB1, 0xB2), gradient, strict=True):  # RL, AP, FH: the LPS axes
        block.add_new(element, "FL", value)
    ds.save_as(path, enforce_file_format=True)



# Dimension index pointers of the Enhanced 4D writer: (index pointer, functional group pointer).
_STACK_DIMENSIONS = ((0x00209056, 0x00209111), (0x00209057, 0x00209111))  # StackID, InStackPositionNumber
_VOLUME_DIMENSIONS = {
    # DiffusionBValue in MRDiffusionSequence, DiffusionGradientOrientation in its direction sequence
    "diffusion": ((0x00189087, 0x00189117), (0x00189089, 0x00189076)),
    "echo": ((0x00189082, 0x00189114),),  # EffectiveEchoTime in MREchoSequence
    "time": ((0x00209128, 0x00209111),),  # TemporalPositionIndex in FrameContentSequence
}


def write_enhanced_4d(
    volumes: Sequence[np.ndarray],
    affine: np.ndarray,
    path: str | os.PathLike[str],
    *,
    b_values: Sequence[float] | None = None,
    gradients: Sequence[Vector] | None = None,
    echo_times: Sequence[float] | None = None,
    image_kinds: Sequence[str] | None = None,
    repetition_time: float = 3000.0,
    shuffle_frames: bool = False,
    seed: int = 0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    instance_number: int = 1,
) -> Path:
    """Write several volumes as one Enhanced MR Image Storage file (frames volume by volume).

    Each frame carries its PlanePositionSequence and FrameContentSequence (StackID,
    InStackPositionNumber, TemporalPositionIndex = volume number, DimensionIndexValues); with
    ``b_values`` an MRDiffusionSequence (DiffusionBValue, DiffusionDirectionality,
    DiffusionGradientDirectionSequence), with ``echo_times`` an MREchoSequence (EffectiveEchoTime),
    with ``image_kinds`` an MRImageFrameTypeSequence whose FrameType's third value is MAGNITUDE,
    PHASE, REAL or IMAGINARY (and ComplexImageComponent). The DimensionIndexSequence names the
    value that varies (b-value, echo time, else the temporal position) after stack and in-stack
    position, as Philips and Siemens Enhanced exports do (diffusion: b-value rank, then volume).

    Args:
        volumes: 3D arrays (i, j, k) of one shape (stored as uint16 when all are >= 0, else int16).
        affine: 4x4 RAS affine of every volume.
        path: the file to write.
        b_values, gradients: per volume (gradients: unit directions in DICOM LPS).
        echo_times: EffectiveEchoTime per volume (ms).
        image_kinds: "M", "P", "R" or "I" per volume.
        repetition_time: RepetitionTime (ms), shared.
        shuffle_frames: store the frames in a random order (seeded by ``seed``): readers must sort them.
        series_uid, study_uid, frame_of_reference_uid: fresh ones when None (pass the same ones
            to write one series as several files, one volume per file as Siemens XA does).
        instance_number: the file's InstanceNumber.

    Example:
        >>> import tempfile, os, pydicom
        >>> from medres3d.synthetic import make_affine
        >>> vols = [np.zeros((8, 8, 3)), np.ones((8, 8, 3))]
        >>> p = write_enhanced_4d(vols, make_affine(), os.path.join(tempfile.mkdtemp(), "dwi.dcm"),
        ...                       b_values=[0, 1000], gradients=[(0, 0, 0), (1, 0, 0)])
        >>> int(pydicom.dcmread(p).NumberOfFrames)
        6
    """
    from pydicom.uid import EnhancedMRImageStorage

    arrays = _check_volumes(volumes, None, "volumes")
    for name, values in (("b_values", b_values), ("gradients", gradients), ("echo_times", echo_times),
                         ("image_kinds", image_kinds)):  # fmt: skip
        if values is not None and len(values) != len(arrays):
            raise ConfigError(f"{name} must have one entry per volume ({len(arrays)}), got {len(values)}")
    kinds = {"M": "MAGNITUDE", "P": "PHASE", "R": "REAL", "I": "IMAGINARY"}
    if image_kinds is not None and not set(image_kinds) <= set(kinds):
        raise ConfigError(f"image_kinds must be among {sorted(kinds)}, got {list(image_kinds)}")
    n = arrays[0].shape[2]
    geometry = slice_geometry(affine, n)
    frames = [(v, k) for v in range(len(arrays)) for k in range(n)]  # volume-major, as scanners store them
    if shuffle_frames:
        frames = [frames[i] for i in np.random.default_rng(seed).permutation(len(frames))]
    values = np.stack([arrays[v][:, :, k].T for v, k in frames])
    signed = int(values.min() < 0)
    stored = np.clip(np.rint(values), -32768 if signed else 0, 32767 if signed else 65535)

    ds = Dataset()
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = new_uid()
    patient_study_series(
        ds, modality="MR", patient_id="PHANTOM", study_uid=study_uid or new_uid(),
        series_uid=series_uid or new_uid(), series_number=7, description="synthetic enhanced 4D",
    )  # fmt: skip
    ds.FrameOfReferenceUID = frame_of_reference_uid or new_uid()
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION" if b_values is not None else "MIXED", "NONE"]
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.PatientPosition = "HFS"
    ds.NumberOfFrames = len(frames)
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    varying = "diffusion" if b_values is not None else "echo" if echo_times is not None else "time"
    dim_uid = new_uid()
    ds.DimensionOrganizationSequence = [Dataset()]
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = dim_uid
    ds.DimensionIndexSequence = []
    for pointer, group in (*_STACK_DIMENSIONS, *_VOLUME_DIMENSIONS[varying]):
        item = Dataset()
        item.DimensionOrganizationUID = dim_uid
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = group
        ds.DimensionIndexSequence.append(item)

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = geometry.pixel_spacing
    measures.SliceThickness = measures.SpacingBetweenSlices = geometry.spacing_between_slices
    shared.PixelMeasuresSequence = [measures]
    plane = Dataset()
    plane.ImageOrientationPatient = geometry.orientation
    shared.PlaneOrientationSequence = [plane]
    timing = Dataset()
    timing.RepetitionTime = repetition_time
    timing.FlipAngle = 90
    shared.MRTimingAndRelatedParametersSequence = [timing]
    ds.SharedFunctionalGroupsSequence = [shared]
    b_ranks = sorted(set(b_values)) if b_values is not None else []
    echo_ranks = sorted(set(echo_times)) if echo_times is not None else []

    per_frame = []
    for v, k in frames:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = geometry.positions[k]
        item.PlanePositionSequence = [position]
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        content.TemporalPositionIndex = v + 1
        # one index tuple per volume, as converters sort frames by them (dcm2niix does)
        volume_index = [v + 1]
        if b_values is not None:
            volume_index = [b_ranks.index(b_values[v]) + 1, v + 1]
        elif echo_times is not None:
            volume_index = [echo_ranks.index(echo_times[v]) + 1]
        content.DimensionIndexValues = [1, k + 1, *volume_index]
        item.FrameContentSequence = [content]
        if b_values is not None:
            diffusion = Dataset()
            diffusion.DiffusionBValue = float(b_values[v])
            gradient = [float(x) for x in (gradients[v] if gradients is not None else (0, 0, 0))]
            directional = b_values[v] > 0 and any(gradient)
            # b > 0 without a direction: a derived isotropic (trace) image, as Philips writes one
            diffusion.DiffusionDirectionality = (
                "DIRECTIONAL" if directional else "ISOTROPIC" if b_values[v] > 0 else "NONE"
            )
            if directional:
                direction = Dataset()
                direction.DiffusionGradientOrientation = gradient
                diffusion.DiffusionGradientDirectionSequence = [direction]
            item.MRDiffusionSequence = [diffusion]
        if echo_times is not None:
            echo = Dataset()
            echo.EffectiveEchoTime = float(echo_times[v])
            item.MREchoSequence = [echo]
        frame_type = Dataset()
        kind = kinds[image_kinds[v]] if image_kinds is not None else "MAGNITUDE"
        frame_type.FrameType = ["ORIGINAL", "PRIMARY", kind, "NONE"]
        frame_type.ComplexImageComponent = kind
        item.MRImageFrameTypeSequence = [frame_type]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    image_pixel_module(ds, stored.astype(np.int16 if signed else np.uint16), signed, 16)
    return save(ds, path, ExplicitVRLittleEndian, EnhancedMRImageStorage)
