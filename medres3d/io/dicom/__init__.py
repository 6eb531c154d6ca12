"""DICOM CT/MR volumes: find series under a folder, and load a series or a multi-frame file.

The public names of the DICOM reader live here; the work is split by job into
:mod:`~medres3d.io.dicom.header` (header-only reading of one file), :mod:`~medres3d.io.dicom.scan`
(grouping files into series), :mod:`~medres3d.io.dicom.geometry` (slice ordering and grid checks),
:mod:`~medres3d.io.dicom.stack` (series to volume), :mod:`~medres3d.io.dicom.multiframe` (Enhanced
and RT Dose multi-frame files) and :mod:`~medres3d.io.dicom.pixels` (decoding and rescale).
Every warning and error is explained in ``docs/dicom.md``.

Example:
    >>> from medres3d.io.dicom import find_dicom_series, load_dicom_series
    >>> for series in find_dicom_series("study/"):          # doctest: +SKIP
    ...     print(series.summary())
    >>> vol = load_dicom_series("study/ct_series/")          # doctest: +SKIP
    >>> vol.spacing, vol.orientation, vol.warnings          # doctest: +SKIP
    ((0.7, 0.7, 1.0), 'LPS', [])
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from medres3d.errors import (
    CorruptFileError,
    MultipleSeriesError,
    NotAnImageError,
    ResourceLimitError,
    UnsupportedFormatError,
    VolumeLoadError,
)
from medres3d.io.dicom.header import read_header
from medres3d.io.dicom.multiframe import load_multiframe
from medres3d.io.dicom.multivolume import load_4d
from medres3d.io.dicom.scan import DicomScan, find_dicom_series, group_series, scan_dicom_tree, scan_files
from medres3d.io.dicom.series import DicomSeries
from medres3d.io.dicom.types import FileHeader, SkippedFile
from medres3d.io.limits import DEFAULT_MAX_VOXELS
from medres3d.io.volume import Volume

__all__ = [
    "DicomScan",
    "DicomSeries",
    "FileHeader",
    "MultipleSeriesError",
    "SkippedFile",
    "find_dicom_series",
    "load_dicom_file",
    "load_dicom_series",
    "scan_dicom_tree",
]

logger = logging.getLogger("medres3d.io.dicom")

_SKIP_ERRORS: dict[str, type[VolumeLoadError]] = {
    "empty": CorruptFileError,
    "not-dicom": CorruptFileError,
    "unreadable": CorruptFileError,
    "non-image": NotAnImageError,
    "unsupported": UnsupportedFormatError,
    "resource": ResourceLimitError,
}


def load_dicom_series(
    folder_or_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    series_uid: str | None = None,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    strict: bool = False,
    as_4d: bool = False,
    philips_scaling: str = "display",
    resample: str | None = None,
) -> Volume:
    """Load the image series in a folder (searched recursively) or in a list of files.

    Localizer series are ignored (with a ``localizer-excluded`` warning). When several image series
    remain, nothing is guessed: a :class:`MultipleSeriesError` lists them (uid, description, number
    of files) and ``series_uid`` picks one (a SeriesInstanceUID, or a ``DicomSeries.key`` for a
    part of a split series). Files in the folder that are not part of the volume (SR, SEG, DICOMDIR,
    other files) are reported in a ``skipped-files`` warning.

    Args:
        folder_or_files: a series folder, or the files of one series.
        series_uid: which series to load when there are several.
        dtype: "float32" (default), "float64" or "native" (see :func:`medres3d.io.dicom.stack.load_series`).
        max_voxels: refuse volumes larger than this (None: no limit), checked before reading pixels.
        strict: raise SeriesGeometryError on missing slices, uneven spacing and conflicting duplicates.
        as_4d: load every volume of a 4D series (the parts of one SeriesInstanceUID: diffusion
            b-values and directions, time points, echoes, magnitude/phase, one file per Siemens
            mosaic) as one Volume with one channel per volume, in acquisition order, and their
            b-values, b-vectors and echo times in ``meta``
            (see :func:`medres3d.io.dicom.multivolume.load_4d`).
            ``series_uid`` then names the series (a uid or any of its parts' keys).
        philips_scaling: "display" (default) or "precise" (Philips' floating-point values, as
            dcm2niix gives by default); see :func:`medres3d.io.dicom.series.load_series`.
        resample: None (default) or "even": a tilted or unevenly spaced series resampled onto an
            even orthogonal grid (a ``resampled-even`` warning and ``meta["resampled"]``).

    Raises:
        NotAnImageError: no image series (the message summarizes what was skipped and why).
        MultipleSeriesError: several image series and no (or an ambiguous) ``series_uid``.
        SeriesGeometryError, UnsupportedFormatError, CorruptFileError, ResourceLimitError: as the
            series loader.

    Example:
        >>> vol = load_dicom_series("ct/", series_uid="1.2.840.113619.2.55.3", strict=True)  # doctest: +SKIP
    """
    if isinstance(folder_or_files, str | os.PathLike):
        where = Path(folder_or_files)
        scan = scan_dicom_tree(where, recursive=True)
    else:
        paths = [Path(p) for p in folder_or_files]
        if not paths:
            raise NotAnImageError("(no files)", "an empty list of files was given")
        where = paths[0] if len(paths) == 1 else Path(os.path.commonpath([str(p.parent) for p in paths]))
        scan = scan_files(paths)
    return _load_scanned(
        where, scan, series_uid=series_uid, dtype=dtype, max_voxels=max_voxels, strict=strict,
        as_4d=as_4d, philips_scaling=philips_scaling, resample=resample,
    )  # fmt: skip


def _load_scanned(
    where: Path,
    scan: DicomScan,
    *,
    series_uid: str | None,
    dtype: str,
    max_voxels: int | None,
    strict: bool,
    as_4d: bool,
    philips_scaling: str,
    resample: str | None,
) -> Volume:
    """The series (or 4D series) of ``scan`` that ``series_uid`` names, loaded, with the scan's notes."""
    if as_4d:
        parts = _choose_4d(where, scan, series_uid)
        chosen = parts[0]
        volume = load_4d(
            parts, dtype=dtype, max_voxels=max_voxels, strict=strict, philips_scaling=philips_scaling,
            resample=resample,
        )  # fmt: skip
    else:
        chosen = _choose(where, scan, series_uid)
        volume = chosen.load(
            dtype=dtype, max_voxels=max_voxels, strict=strict, philips_scaling=philips_scaling,
            resample=resample,
        )
    extra = []
    others = [s for s in scan.series if s.is_localizer and s.uid != chosen.uid]
    if others and not chosen.is_localizer:
        extra.append(
            f"localizer-excluded: {len(others)} localizer series in the folder were not loaded: "
            + "; ".join(s.summary() for s in others[:3])
        )
    if scan.skipped:
        extra.append(f"skipped-files: {_skip_summary(scan.skipped)}")
    for message in extra:
        logger.warning("%s: %s", where, message)
    volume.warnings.extend(extra)
    return volume


def load_dicom_file(
    path: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    strict: bool = False,
    as_4d: bool = False,
    philips_scaling: str = "display",
    resample: str | None = None,
) -> Volume:
    """Load one multi-frame DICOM file (Enhanced CT/MR, Legacy Converted, RT Dose) or Siemens mosaic.

    An Enhanced file that holds several volumes (diffusion, fMRI, echoes, magnitude/phase in its
    frames) is split like a folder: a :class:`MultipleSeriesError` lists its volumes unless
    ``series_uid`` picks one (its key) or ``as_4d`` stacks them all.

    Args:
        path: the file.
        series_uid, dtype, max_voxels, strict, as_4d, philips_scaling, resample: as
            :func:`load_dicom_series`. A file without any geometry loads with a ``no-geometry``
            warning (frames in stored order, identity-like affine), and is a SeriesGeometryError
            with ``strict``.

    Raises:
        UnsupportedFormatError: a single-frame file ("a single 2D slice; pass the series folder"),
            or a colour image.
        NotAnImageError: a non-image object (SEG, SR, RTSTRUCT, PR, KO, DICOMDIR...), named.
        MultipleSeriesError: an Enhanced 4D file, without ``series_uid`` or ``as_4d``.
        CorruptFileError: empty, not DICOM, unreadable or undecodable.

    Example:
        >>> vol = load_dicom_file("enhanced_ct.dcm")   # doctest: +SKIP
        >>> vol.meta["num_frames"]                     # doctest: +SKIP
        120
        >>> load_dicom_file("dwi_enhanced.dcm", as_4d=True).meta["b_values"][:2]  # doctest: +SKIP
        [0.0, 1000.0]
    """
    header = read_header(path)
    if isinstance(header, SkippedFile):
        raise _SKIP_ERRORS.get(header.kind, CorruptFileError)(header.path, header.reason)
    if header.is_enhanced or as_4d or series_uid is not None:
        # grouped as a one-file series (its header read once): an Enhanced 4D file's volumes are its parts
        series, skipped = group_series([header])
        return _load_scanned(
            header.path, DicomScan(series=series, skipped=skipped), series_uid=series_uid, dtype=dtype,
            max_voxels=max_voxels, strict=strict, as_4d=as_4d, philips_scaling=philips_scaling,
            resample=resample,
        )  # fmt: skip
    if header.is_mosaic:  # one Siemens mosaic file is a whole volume (one time point or direction)
        from medres3d.io.dicom.mosaic import load_mosaic

        return load_mosaic(header, dtype=dtype, max_voxels=max_voxels)
    if not header.is_multiframe:
        raise UnsupportedFormatError(
            header.path,
            "a single 2D slice; pass the series folder (or the list of its files) to load a volume",
        )
    return load_multiframe(
        header, dtype=dtype, max_voxels=max_voxels, strict=strict, philips_scaling=philips_scaling,
        resample=resample,
    )  # fmt: skip


def _choose(where: Path, scan: DicomScan, series_uid: str | None) -> DicomSeries:
    if series_uid is not None:
        exact = [s for s in scan.series if s.key == series_uid]
        matches = exact or [s for s in scan.series if s.uid == series_uid]
        if not matches:
            found = "; ".join(s.summary() for s in scan.series) or "no image series"
            raise NotAnImageError(where, f"no series with uid {series_uid!r}; found: {found}")
        images = [s for s in matches if not s.is_localizer] or matches
        if len(images) > 1:
            raise MultipleSeriesError(
                where,
                f"series {series_uid} is split into {len(images)} parts (different orientation, size, "
                "echo or acquisition); pass one of these keys as series_uid: "
                + "; ".join(s.summary() for s in images),
                images,
            )
        return images[0]
    images = [s for s in scan.series if not s.is_localizer]
    if not images:
        if scan.series:
            raise NotAnImageError(
                where,
                "only localizer series found (pass series_uid to load one anyway): "
                + "; ".join(s.summary() for s in scan.series),
            )
        skipped = f"; {_skip_summary(scan.skipped)}" if scan.skipped else " (no files)"
        raise NotAnImageError(where, f"no DICOM image series found{skipped}{_other_images_hint(where, scan)}")
    if len(images) > 1 and len({s.uid for s in images}) == 1:
        raise MultipleSeriesError(
            where,
            f"{len(images)} volumes of one series found (a 4D series: diffusion, time points, echoes... "
            "or parts of another orientation or size); load them all with as_4d=True, or one with "
            "series_uid=<key>: " + "; ".join(s.summary() for s in images),
            images,
        )
    if len(images) > 1:
        raise MultipleSeriesError(
            where,
            f"{len(images)} image series found; choose one with series_uid=... (or use find_dicom_series): "
            + "; ".join(s.summary() for s in images),
            images,
        )
    return images[0]


def _choose_4d(where: Path, scan: DicomScan, series_uid: str | None) -> list[DicomSeries]:
    """The image parts of one SeriesInstanceUID: the one asked for, or the only one there is."""
    if series_uid is not None:
        uids = {s.uid for s in scan.series if series_uid in (s.key, s.uid)}
    else:
        uids = {s.uid for s in scan.series if not s.is_localizer}
    # none or several: the usual NotAnImageError / MultipleSeriesError, listing what there is
    uid = uids.pop() if len(uids) == 1 else _choose(where, scan, series_uid).uid
    parts = [s for s in scan.series if s.uid == uid and not s.is_localizer]
    return parts or [s for s in scan.series if s.uid == uid]


def _other_images_hint(where: Path, scan: DicomScan) -> str:
    """What to do with a folder of NIfTI/ITK files, which is not a series: pass them, or run a batch."""
    from medres3d.io.itk import is_itk_path
    from medres3d.io.nifti import is_nifti_path

    images = sorted(s.path for s in scan.skipped if is_nifti_path(s.path) or is_itk_path(s.path))
    if not images:
        return ""
    return (f". The folder holds {len(images)} NIfTI/ITK image file(s) (e.g. {images[0].name}), each a scan "
            f"of its own: pass the files themselves, or classify them all with `medres3d batch MODEL {where} "
            "--out results.csv`")


def _skip_summary(skipped: Sequence[SkippedFile]) -> str:
    reasons = Counter(s.reason for s in skipped)
    parts = [f"{n} x {reason} (e.g. {_first(skipped, reason)})" for reason, n in reasons.most_common(5)]
    more = f"; and {len(reasons) - 5} other reasons" if len(reasons) > 5 else ""
    return f"{len(skipped)} file(s) not used: " + "; ".join(parts) + more


def _first(skipped: Sequence[SkippedFile], reason: str) -> str:
    return next(s.path.name for s in skipped if s.reason == reason)
