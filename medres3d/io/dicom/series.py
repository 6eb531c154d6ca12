"""One scanned DICOM series (``DicomSeries``) and its loading into a Volume.

A series of single-frame files is checked (every slice placed, a known pixel spacing, more than
one slice) and stacked by :func:`medres3d.io.dicom.stack.build_volume`; a series of multi-frame
files goes to :func:`medres3d.io.dicom.multiframe.load_multiframe_files`, a Siemens mosaic file to
:func:`medres3d.io.dicom.mosaic.load_mosaic`.

Example:
    >>> from medres3d.io.dicom import find_dicom_series
    >>> vol = find_dicom_series("ct_folder/")[0].load()   # doctest: +SKIP
    >>> vol.shape, vol.warnings                             # doctest: +SKIP
    ((1, 512, 512, 190), [])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medres3d._checks import check_choice
from medres3d.errors import CorruptFileError, ResourceLimitError, SeriesGeometryError, UnsupportedFormatError
from medres3d.io.dicom.header import read_dataset_header
from medres3d.io.dicom.mosaic import load_mosaic
from medres3d.io.dicom.multiframe import load_multiframe_files, unplaced_slice_spacing
from medres3d.io.dicom.pixels import PHILIPS_SCALINGS, output_rescale, read_frames
from medres3d.io.dicom.stack import (
    Allocator,
    SliceSource,
    build_volume,
    check_image_size,
    series_meta,
    validate_resample,
)
from medres3d.io.dicom.types import FileHeader
from medres3d.io.limits import DEFAULT_MAX_VOXELS
from medres3d.io.volume import Volume


@dataclass(frozen=True)
class DicomSeries:
    """One image series found by a scan: what a single volume will be made of.

    Attributes:
        uid: SeriesInstanceUID (shared by the parts of a split series; ``key`` is unique).
        modality: e.g. "CT", "MR".
        description: SeriesDescription.
        files: the series' files, sorted by path (the slice order comes from positions at load).
        series_number: SeriesNumber, or None.
        patient_id: PatientID.
        study_uid: StudyInstanceUID.
        is_localizer: a scout/localizer (ImageType LOCALIZER or an orientation outlier).
        folder: the deepest folder holding all files.
        part: what distinguishes this part of a split series ("" when not split), e.g.
            "echo 2", "acquisition 3", "sagittal", "localizer, coronal".
        rows, columns: image size of every file (of a Siemens mosaic's tiles).
        num_frames: number of 2D images (files, frames of a multi-frame file, or the slices of a
            Siemens mosaic when its header says how many: NumberOfImagesInMosaic).
        notes: scan-time remarks carried into the loaded volume's warnings (e.g. excluded localizers).
        frames: for one volume of an Enhanced 4D file, the 0-based indices of its frames in the
            file (``headers[0]`` then carries that volume's b-value, echo time...); empty: every frame.

    Example:
        >>> series = find_dicom_series("study/")                       # doctest: +SKIP
        >>> [(s.modality, s.num_files, s.description) for s in series]  # doctest: +SKIP
        [('CT', 190, 'CHEST 1.0 B30f')]
        >>> volume = series[0].load()                                   # doctest: +SKIP
    """

    uid: str
    modality: str
    description: str
    files: list[Path]
    series_number: int | None
    patient_id: str
    study_uid: str
    is_localizer: bool
    folder: Path
    part: str = ""
    rows: int = 0
    columns: int = 0
    num_frames: int = 0
    notes: tuple[str, ...] = ()
    headers: tuple[FileHeader, ...] = field(default=(), repr=False, compare=False)
    frames: tuple[int, ...] = field(default=(), repr=False)

    @property
    def num_files(self) -> int:
        """Number of files in the series."""
        return len(self.files)

    @property
    def key(self) -> str:
        """A unique name: the uid, plus ``[part]`` for a part of a split series."""
        return f"{self.uid} [{self.part}]" if self.part else self.uid

    @property
    def is_multiframe(self) -> bool:
        """True for a single multi-frame file (Enhanced CT/MR, RT Dose)."""
        return len(self.headers) == 1 and self.headers[0].is_multiframe

    def __repr__(self) -> str:  # the file list would drown the rest
        return f"DicomSeries({self.summary()})"

    def summary(self) -> str:
        """One line for listings and error messages."""
        what = "localizer " if self.is_localizer else ""
        return (
            f"{self.key} ({what}{self.modality or '?'} #{self.series_number} {self.description!r}: "
            f"{self.num_files} file(s), {self.num_frames} image(s) {self.rows}x{self.columns}, "
            f"in {self.folder})"
        )

    def load(self, **kwargs: Any) -> Volume:
        """Load this series as a Volume; keyword arguments as :func:`medres3d.io.dicom.load_dicom_series`.

        Example:
            >>> vol = find_dicom_series("study/")[0].load(strict=True)  # doctest: +SKIP
        """
        return load_series(self, **kwargs)


def load_series(
    series: DicomSeries,
    *,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    strict: bool = False,
    workers: int | None = None,
    philips_scaling: str = "display",
    resample: str | None = None,
    allocate: Allocator | None = None,
    decoded_files: dict[Path, Any] | None = None,
) -> Volume:
    """Load one scanned series (see the module docstring); multi-frame files (one or several) go to
    :func:`medres3d.io.dicom.multiframe.load_multiframe_files`.

    Args:
        series: from :func:`medres3d.io.dicom.find_dicom_series`.
        dtype: "float32" (default; rescaled values, HU for CT), "float64", or "native": the
            rescaled values in the smallest integer type that holds them exactly (e.g. int16 HU),
            falling back to float32 with a warning when the rescale is not integral.
        max_voxels: refuse series whose headers claim more voxels (None: no limit).
        strict: raise SeriesGeometryError on missing slices, uneven spacing and conflicting
            duplicates instead of warning.
        workers: decoding threads (None: one per CPU, at most 8).
        philips_scaling: "display" (default: RescaleSlope/Intercept, the values the scanner shows
            and every other DICOM reader returns, so results do not change with the reader) or
            "precise": Philips' floating-point values (divided by MR Scale Slope (2005,100E), as
            dcm2niix does by default). Other vendors' files are the same either way.
        resample: None (default: slices at their true positions, a possibly sheared grid) or
            "even": a tilted or unevenly spaced series resampled onto an even orthogonal grid
            (:mod:`medres3d.io.dicom.evengrid`), with a ``resampled-even`` warning.
        allocate: the slice buffer to decode into (see :func:`~medres3d.io.dicom.stack.build_volume`).
        decoded_files: multi-frame files decoded once and shared between the loads of the volumes
            of one 4D file (see :func:`~medres3d.io.dicom.multiframe.load_multiframe_files`).

    A series none of whose files has ImagePositionPatient/ImageOrientationPatient (the scan keeps
    only CT/MR/PT/NM stacks of one image size) loads in InstanceNumber order with a ``no-geometry``
    warning, and is a SeriesGeometryError with ``strict``.

    Raises:
        SeriesGeometryError: missing or inconsistent geometry; irregular slices or no geometry at
            all when ``strict``.
        UnsupportedFormatError: a single 2D slice.
        CorruptFileError: undecodable or truncated pixel data, absurd image size, RescaleSlope 0.
        ResourceLimitError: more voxels than ``max_voxels``.

    Example:
        >>> vol = load_series(find_dicom_series("ct/")[0], dtype="native")  # doctest: +SKIP
        >>> vol.array.dtype                                                  # doctest: +SKIP
        dtype('int16')
    """
    check_choice("philips_scaling", philips_scaling, PHILIPS_SCALINGS)
    validate_resample(resample)
    headers = list(series.headers)
    if len(headers) == 1 and headers[0].is_mosaic and not headers[0].is_multiframe:
        return load_mosaic(
            headers[0], dtype=dtype, max_voxels=max_voxels, notes=series.notes, allocate=allocate
        )
    if all(h.is_multiframe for h in headers):
        return load_multiframe_files(
            headers, dtype=dtype, max_voxels=max_voxels, strict=strict, notes=series.notes, workers=workers,
            philips_scaling=philips_scaling, resample=resample, frames=series.frames or None,
            decoded_files=decoded_files, allocate=allocate,
        )  # fmt: skip
    where = series.folder
    first = headers[0]
    if len(headers) > 1 and all(h.position is None or h.orientation is None for h in headers):
        # only a CT/MR/PT/NM stack of one image size gets here (the scan's rule 7 skips the rest)
        return _load_unplaced(
            series, dtype=dtype, max_voxels=max_voxels, strict=strict, workers=workers,
            philips_scaling=philips_scaling,
        )  # fmt: skip
    for h in headers:
        if h.position is None or h.orientation is None:
            raise SeriesGeometryError(
                h.path,
                "no valid ImagePositionPatient/ImageOrientationPatient: the slice cannot be placed in the "
                f"volume of series {series.key}",
            )
        if h.pixel_spacing is None:
            raise SeriesGeometryError(h.path, "no valid PixelSpacing: the in-plane voxel size is unknown")
    check_image_size(first)
    if len(headers) == 1:
        raise UnsupportedFormatError(
            first.path, "a single 2D slice; pass the series folder (or a multi-frame file) to load a volume"
        )
    sources = [
        SliceSource(
            h.path, h.path.name, h.position, *output_rescale(h, h.slope, h.intercept, philips_scaling),  # type: ignore[arg-type]
            _single_frame_reader(h),
        )
        for h in headers
    ]
    meta = series_meta(first)
    if any(h.philips_scale_slope is not None for h in headers):
        meta["philips_scaling"] = philips_scaling
    meta["num_files"] = len(headers)
    return build_volume(
        sources,
        orientation=first.orientation,  # type: ignore[arg-type]
        pixel_spacing=first.pixel_spacing,  # type: ignore[arg-type]
        headers=headers,
        where=where,
        meta=meta,
        notes=series.notes,
        dtype=dtype,
        max_voxels=max_voxels,
        strict=strict,
        workers=workers,
        resample=resample,
        allocate=allocate,
    )


def _load_unplaced(
    series: DicomSeries,
    *,
    dtype: str,
    max_voxels: int | None,
    strict: bool,
    workers: int | None,
    philips_scaling: str,
) -> Volume:
    """A single-frame series none of whose files has ImagePositionPatient/ImageOrientationPatient.

    The slices go in InstanceNumber order (then file name), PixelSpacing (else 1 mm) apart in-plane
    and :func:`~medres3d.io.dicom.multiframe.unplaced_slice_spacing` apart in depth, on LPS axes
    with origin 0, like a multi-frame file without geometry; a ``no-geometry`` warning says so.

    Raises:
        SeriesGeometryError: with ``strict`` (the slices cannot be placed in space).
    """
    headers = list(series.headers)
    where = series.folder
    if strict:
        raise SeriesGeometryError(
            where,
            f"has no ImagePositionPatient/ImageOrientationPatient in any of its {len(headers)} files "
            f"(series {series.key}): its slices cannot be placed in space (strict=True)",
        )
    first = headers[0]
    check_image_size(first)
    ordered = sorted(headers, key=lambda h: (h.instance_number is None, h.instance_number or 0, str(h.path)))
    try:
        ds = read_dataset_header(first.path, ["SpacingBetweenSlices", "SliceThickness"])
    except ResourceLimitError:
        raise
    except Exception as err:  # pydicom raises several types on a damaged header
        raise CorruptFileError(first.path, f"cannot read the header: {err}") from err
    depth, depth_source = unplaced_slice_spacing(ds)
    spacing = first.pixel_spacing or (1.0, 1.0)
    unnumbered = sum(h.instance_number is None for h in headers)
    order = "InstanceNumber order"
    if unnumbered:
        order += f" (file name order for the {unnumbered} without one)"
    note = (
        f"no-geometry: none of the {len(headers)} files has ImagePositionPatient/ImageOrientationPatient: "
        f"the slices are stacked in {order} on an identity-like grid (pixel spacing "
        f"{'x'.join(f'{v:g}' for v in spacing)} mm{'' if first.pixel_spacing else ' (assumed)'}, slice "
        f"spacing {depth_source}, origin 0, LPS axes); the voxels are right but their position in the "
        "patient is unknown (strict=True refuses such series)"
    )
    sources = [
        SliceSource(
            h.path, h.path.name, (0.0, 0.0, k * depth),
            *output_rescale(h, h.slope, h.intercept, philips_scaling), _single_frame_reader(h),
        )
        for k, h in enumerate(ordered)
    ]
    meta = series_meta(first)
    if any(h.philips_scale_slope is not None for h in headers):
        meta["philips_scaling"] = philips_scaling
    meta["num_files"] = len(headers)
    meta["no_geometry"] = True
    return build_volume(
        sources, orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), pixel_spacing=spacing, headers=ordered,
        where=where, meta=meta, notes=(*series.notes, note), dtype=dtype, max_voxels=max_voxels,
        strict=strict, workers=workers,
    )  # fmt: skip


def _single_frame_reader(header: FileHeader) -> Callable[[], np.ndarray]:
    return lambda: read_frames(header)[0]
