"""Find the DICOM image series under a folder: header-only scan, grouping, localizers, skipped files.

Every file's header is read in parallel (no pixels; see :mod:`medres3d.io.dicom.header`), then:

1. files are grouped by SeriesInstanceUID;
2. each multi-frame file (Enhanced CT/MR, RT Dose...) is a series of its own, except that the
   Enhanced files of one series (slabs of frames, or one frame per file) are split by orientation,
   image size, pixel spacing and echo as in rule 4 and each part is loaded as one volume; an
   Enhanced MR file whose frames repeat positions (a 4D file) is split into one part per volume
   by its per-frame values, as in rule 5 (:func:`_frame_volumes`);
3. files whose ImageType says LOCALIZER are set apart as a localizer series;
4. the rest is split by orientation (ImageOrientationPatient within 1e-3), image size and pixel
   spacing, and echo number: one volume needs one grid;
5. a group where positions repeat is split by AcquisitionNumber, then by TemporalPositionIdentifier,
   when that removes the repeats (a multi-acquisition CT whose acquisitions cover different ranges
   stays one series; repeated passes over the same range become one series each);
6. a small orientation group (at most 3 files) beside a group at least 4 times larger in the same
   series is a localizer (scouts are often saved with the series they plan);
7. files without any geometry (no ImagePositionPatient/ImageOrientationPatient) join the largest
   group of their series (so that loading names them). When the whole series has none, it is a
   series of its own (loaded in InstanceNumber order with a ``no-geometry`` warning) only if it
   looks like a cross-sectional stack: at least 2 files, all of one image size, modality CT, MR, PT
   or NM, not Secondary Capture and not a localizer. Anything else without geometry (projection
   radiographs CR/DX/MG/XA, secondary captures, a lone slice) is skipped with the reason.

Non-image objects (SEG, SR, RTSTRUCT, PR, KO, DICOMDIR...), non-DICOM and unreadable files come back
in ``DicomScan.skipped`` with the reason.

Example:
    >>> import os
    >>> from pydicom.data import get_testdata_file
    >>> scan = scan_dicom_tree(os.path.dirname(get_testdata_file("CT_small.dcm")))
    >>> len(scan.series) > 0 and len(scan.skipped) > 0
    True
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medres3d.errors import ConfigError, CorruptFileError, MedRes3DError
from medres3d.io.dicom.header import read_header
from medres3d.io.dicom.series import DicomSeries
from medres3d.io.dicom.types import FileHeader, SkippedFile

if TYPE_CHECKING:
    pass

# IOP direction cosines closer than this are the same orientation (rounding in DS strings).
_ORIENTATION_TOL = 1e-3
# Orientation-outlier localizers: at most this many files, beside a group this many times larger.
_OUTLIER_MAX_FILES = 3
_OUTLIER_RATIO = 4


@dataclass(frozen=True)
class DicomScan:
    """The result of :func:`scan_dicom_tree`: image series, and every file not used with the reason."""

    series: list[DicomSeries]
    skipped: list[SkippedFile]


def scan_dicom_tree(
    root: str | os.PathLike[str],
    recursive: bool = True,
    workers: int | None = None,
) -> DicomScan:
    """Scan a folder (or one file) for DICOM image series, reading headers only.

    Args:
        root: a folder, or a single file.
        recursive: also scan sub-folders.
        workers: parallel header readers (threads); None: one per CPU, 1 reads serially. Threads
            overlap the file reads of a cold cache or a network share; on cached local files
            the parsing (Python, under the GIL) dominates and they cost about as much as serial.
            (Worker processes were measured slower still on 2 cores, and forking a busy process is
            the hazard of issue 10: there is no process option.)

    Returns:
        A DicomScan: ``series`` sorted by patient, study, series number and uid; ``skipped`` sorted
        by path.

    Raises:
        CorruptFileError: ``root`` does not exist.

    Example:
        >>> scan = scan_dicom_tree("incoming/", recursive=True)  # doctest: +SKIP
        >>> for s in scan.skipped: print(s.path, s.reason)       # doctest: +SKIP
    """
    root = Path(root)
    irregular: list[SkippedFile] = []
    if root.is_file():
        paths = [root]
    elif root.is_dir():
        paths = list_files(root, recursive, irregular)
    else:
        raise CorruptFileError(root, "no such file or folder")
    scan = scan_files(paths, workers)
    if not irregular:
        return scan
    return DicomScan(scan.series, sorted(scan.skipped + irregular, key=lambda s: str(s.path)))


def find_dicom_series(root: str | os.PathLike[str], recursive: bool = True) -> list[DicomSeries]:
    """The image series under ``root`` (see :func:`scan_dicom_tree`; skipped files are dropped).

    Example:
        >>> import medres3d as mr
        >>> for s in mr.find_dicom_series("archive/"):  # doctest: +SKIP
        ...     print(s.summary())
    """
    return scan_dicom_tree(root, recursive).series


def list_files(root: Path, recursive: bool, irregular: list[SkippedFile] | None = None) -> list[Path]:
    """Every regular file under ``root``, sorted by path; symlinked folders are not followed.

    Entries that are not regular files (dangling or looping links, links to folders, FIFOs,
    sockets, devices) are never opened (a FIFO would block the reader); they are appended to
    ``irregular`` with the reason, when given.
    """
    found: list[Path] = []
    if recursive:
        for folder, dirs, names in os.walk(root):
            found.extend(Path(folder, name) for name in names)
            # os.walk lists links to folders among the folders, and does not follow them
            found.extend(Path(folder, name) for name in dirs if os.path.islink(os.path.join(folder, name)))
    else:
        found = [p for p in root.iterdir() if not p.is_dir() or p.is_symlink()]
    files = []
    for path in sorted(found):
        reason = _irregular_reason(path)
        if reason is None:
            files.append(path)
        elif irregular is not None:
            irregular.append(SkippedFile(path, reason, "unreadable"))
    return files


def _irregular_reason(path: Path) -> str | None:
    """Why ``path`` is not a regular file to read, or None when it is one."""
    try:
        mode = path.stat().st_mode  # follows links
    except OSError as err:
        if path.is_symlink():
            kind = "symbolic link loop" if err.errno == errno.ELOOP else "dangling symbolic link"
            return f"{kind}: {err.strerror or err}"
        return f"cannot read file: {err.strerror or err}"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "symbolic link to a folder, not followed"
    kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"
    return f"not a regular file ({kind}); not opened"


def scan_files(paths: Sequence[Path], workers: int | None = None) -> DicomScan:
    """Read the headers of ``paths`` in parallel and group them (the core of :func:`scan_dicom_tree`)."""
    results = read_headers(paths, workers)
    headers = [r for r in results if isinstance(r, FileHeader)]
    skipped = [r for r in results if isinstance(r, SkippedFile)]
    series, more_skipped = group_series(headers)
    return DicomScan(series=series, skipped=sorted(skipped + more_skipped, key=lambda s: str(s.path)))


def read_headers(paths: Sequence[Path], workers: int | None = None) -> list[FileHeader | SkippedFile]:
    """:func:`read_header` over ``paths``, in input order, with threads."""
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer or None, got {workers!r}")
    if workers == 1 or len(paths) < 8:
        return [read_header(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(read_header, paths))


def group_series(headers: Iterable[FileHeader]) -> tuple[list[DicomSeries], list[SkippedFile]]:
    """Group image file headers into series (the numbered rules of the module docstring)."""
    by_uid: dict[str, list[FileHeader]] = defaultdict(list)
    for h in sorted(headers, key=lambda h: str(h.path)):
        # Files without a SeriesInstanceUID cannot be matched with anything but their folder.
        by_uid[h.series_uid or f"(no SeriesInstanceUID) {h.path.parent}"].append(h)
    series: list[DicomSeries] = []
    skipped: list[SkippedFile] = []
    for uid, members in by_uid.items():
        groups, lost = _split_uid(members)
        skipped.extend(lost)
        series.extend(_name_parts(uid, groups))
    series.sort(
        key=lambda s: (
            s.patient_id,
            s.study_uid,
            s.series_number or math.inf,
            s.uid,
            s.is_localizer,
            _natural(s.part),
        )
    )
    return series, skipped


def _natural(text: str) -> list[Any]:
    """Sort key putting "echo 2" before "echo 10"."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", text)]


@dataclass
class _Group:
    headers: list[FileHeader]
    is_localizer: bool = False
    labels: dict[str, str] = field(default_factory=dict)  # attribute -> value, for naming parts
    frames: tuple[int, ...] = ()  # one volume of an Enhanced 4D file: its frames (0-based)


def _split_uid(members: list[FileHeader]) -> tuple[list[_Group], list[SkippedFile]]:
    mosaics = [h for h in members if h.is_mosaic and not h.is_multiframe]
    members = [h for h in members if not (h.is_mosaic and not h.is_multiframe)]
    mosaic_groups = _mosaic_volumes(mosaics)
    if not members:
        return mosaic_groups, []
    groups, lost = _split_files(members)
    return mosaic_groups + groups, lost


def _mosaic_volumes(mosaics: list[FileHeader]) -> list[_Group]:
    """Each Siemens mosaic file is one 3D volume: a part of its own, named by what tells it apart."""
    ordered = sorted(mosaics, key=_acquisition_order)
    groups = [_Group([h]) for h in ordered]
    _label_volumes(groups)
    return groups


def _acquisition_order(h: FileHeader) -> tuple[Any, ...]:
    """Sort key putting the volumes of a 4D series in acquisition order (dcm2niix's order too)."""
    return (
        h.acquisition_time or "~",
        h.acquisition if h.acquisition is not None else math.inf,
        h.instance_number if h.instance_number is not None else math.inf,
        str(h.path),
    )


def _label_volumes(groups: list[_Group]) -> None:
    """Name the volumes of one series by b-value and direction, image kind and echo time.

    Only what varies between them names them; volumes that the values do not tell apart (repeated
    b0 images, the time points of fMRI) get their index in acquisition order, ``t1``, ``t2``...
    """
    firsts = [g.headers[0] for g in groups]
    directions: list[tuple[float, ...]] = []
    for h in firsts:
        if h.gradient is not None and (h.b_value or 0) > 0 and not h.is_isotropic_diffusion:
            rounded = tuple(round(v, 3) for v in h.gradient)
            if rounded not in directions:
                directions.append(rounded)
    labels: list[dict[str, str]] = []
    for h in firsts:
        label: dict[str, str] = {}
        if h.b_value is not None:
            direction = ""
            if h.is_isotropic_diffusion:
                direction = " isotropic"
            elif h.gradient is not None and h.b_value > 0:
                direction = f" dir{directions.index(tuple(round(v, 3) for v in h.gradient)) + 1}"
            label["diffusion"] = f"b{h.b_value:g}{direction}"
        if h.image_kind:
            label["kind"] = _KIND_NAMES[h.image_kind]
        if h.echo_time is not None:
            label["echo_time"] = f"TE {h.echo_time:g}"
        labels.append(label)
    for attr in ("diffusion", "kind", "echo_time"):
        if len({label.get(attr, "") for label in labels}) > 1:
            for g, label in zip(groups, labels, strict=True):
                if attr in label:
                    g.labels[attr] = label[attr]
    names = [tuple(g.labels.get(a, "") for a in ("diffusion", "kind", "echo_time")) for g in groups]
    for n, (g, name) in enumerate(zip(groups, names, strict=True)):
        if len(groups) > 1 and names.count(name) > 1:
            g.labels["volume"] = f"t{n + 1}"


_KIND_NAMES = {"M": "magnitude", "P": "phase", "R": "real", "I": "imaginary"}


def _split_files(members: list[FileHeader]) -> tuple[list[_Group], list[SkippedFile]]:
    multiframe = [h for h in members if h.is_multiframe]
    together = len(multiframe) > 1
    groups = [g for h in multiframe if not (together and h.is_enhanced) for g in _frame_volumes(h)]
    groups += _group_enhanced([h for h in multiframe if together and h.is_enhanced])
    single = [h for h in members if not h.is_multiframe]
    with_geometry = [h for h in single if h.position is not None and h.orientation is not None]
    without = [h for h in single if h.position is None or h.orientation is None]
    if single and not with_geometry:
        why_not = _not_an_unplaced_stack(single)
        if why_not is None:
            groups.append(_Group(single, labels={"geometry": "no geometry"}))
            return groups, []
        reason = (
            "no ImagePositionPatient/ImageOrientationPatient in any file of the series: a projection "
            f"or secondary-capture image, not a cross-sectional volume ({why_not})"
        )
        return groups, [SkippedFile(h.path, reason, "unsupported") for h in single]

    localizers = [h for h in with_geometry if h.is_localizer]
    images = [h for h in with_geometry if not h.is_localizer]
    main = [g for part in _split_by_grid(images) for g in _split_repeats(part)]
    _mark_orientation_outliers(main)
    groups += main
    for g in _split_by_grid(localizers):
        g.is_localizer = True
        g.labels["localizer"] = "localizer"
        groups.append(g)
    if without:
        # They belong to this series but cannot be placed; loading the largest group names them.
        target = max((g for g in groups if not g.is_localizer), key=lambda g: len(g.headers), default=None)
        if target is None:
            groups.append(_Group(without))
        else:
            target.headers = sorted(target.headers + without, key=lambda h: str(h.path))
    return groups, []


# Modalities whose geometry-less single-frame series are still slice stacks (an old or stripped
# export): projection modalities (CR, DX, MG, XA, RF, IO, PX...) and everything else are not.
_CROSS_SECTIONAL = frozenset({"CT", "MR", "PT", "NM"})
# Secondary Capture Image Storage: screenshots and scanned films, whatever their Modality says.
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _not_an_unplaced_stack(headers: list[FileHeader]) -> str | None:
    """Why single-frame files without any geometry are not a slice stack to load (None: they are).

    A batch over a PACS folder must not turn radiographs and screenshots into "volumes", so only
    what can only be a cross-sectional series qualifies (rule 7 of the module docstring).
    """
    modalities = sorted({h.modality or "?" for h in headers})
    if not set(modalities) <= _CROSS_SECTIONAL:
        return f"modality {'/'.join(modalities)}"
    if any(h.sop_class_uid.startswith(_SECONDARY_CAPTURE) for h in headers):
        return "Secondary Capture"
    if any(h.is_localizer for h in headers):
        return "ImageType LOCALIZER"
    if len(headers) < 2:
        return "a single image"
    if len({(h.rows, h.columns) for h in headers}) > 1:
        return "images of different sizes"
    return None


def _group_enhanced(headers: list[FileHeader]) -> list[_Group]:
    """Several Enhanced files of one series, grouped by what their frames say.

    A file whose own frames repeat positions is a 4D file: it is split into its volumes as a lone
    file is (:func:`_frame_volumes`). Every other file is placed by its first frame in slice order
    and carries its frames' volume values (b-value and direction, echo time, image kind, temporal
    position): the files are grouped by grid like single-frame files, and files that repeat each
    other's positions (one volume per file, as Siemens XA writes diffusion and fMRI) are split
    into volumes by the same rules (:func:`_split_repeats`), while slabs of one volume, or one
    frame per file, stay one volume. The functional groups are read here, only for series of
    several Enhanced files; a file whose frames cannot be placed stays a series of its own, for
    its load to name the problem.
    """
    from medres3d.io.dicom.framesplit import frame_headers

    placed, unplaced, four_d = [], [], []
    covers: dict[Path, frozenset[float]] = {}  # the slice depths of each file's frames
    for h in sorted(headers, key=_acquisition_order):
        try:
            found = frame_headers(h)
        except MedRes3DError:
            found = None
        if found is None:
            unplaced.append(_Group([h], labels={"file": h.path.name}))
        elif _has_repeats(found[0]):
            four_d.append(_frame_volumes(h, found))
        else:
            depths = _depths(found[0])
            placed.append(_file_volume(h, found[0][int(np.argmin(depths))]))
            covers[h.path] = frozenset(np.round(depths, 2).tolist())
    volumes = [g for parts in four_d for g in parts]
    if len(four_d) > 1:  # one 4D acquisition in several files: its volumes are named together
        for g in volumes:
            for attr in ("diffusion", "kind", "echo_time", "volume"):
                g.labels.pop(attr, None)
        _label_volumes(volumes)
        names = [tuple(v for k, v in g.labels.items() if k != "file") for g in volumes]
        if len(set(names)) == len(names):
            for g in volumes:
                g.labels.pop("file")
    by_file, grouped = (lambda h: (str(h.path),),), []
    for part in _split_by_grid(placed):
        # files that each hold all the slices and that nothing else tells apart (fMRI, one volume per
        # file) are volumes by file; repeated slabs of one volume are duplicates for the loader
        whole_volumes = len({covers[h.path] for h in part.headers}) == 1
        grouped += _split_repeats(part, by_file if whole_volumes else ())
    return grouped + volumes + unplaced


# What one volume's frames tell about it (carried by the header of its file or part).
_VOLUME_FIELDS = ("b_value", "gradient", "echo_time", "repetition_time", "temporal_position", "image_type")


def _depths(frames: list[FileHeader]) -> np.ndarray:
    """Each frame's depth along the slice normal (mm)."""
    iop = np.asarray(frames[0].orientation, dtype=np.float64)
    return np.asarray([f.position for f in frames], dtype=np.float64) @ np.cross(iop[:3], iop[3:])


def _file_volume(header: FileHeader, lowest: FileHeader) -> FileHeader:
    """An Enhanced file of one volume (or slab) as a header: its lowest frame's place and values."""
    return header.with_values(
        position=lowest.position,
        orientation=lowest.orientation,
        pixel_spacing=lowest.pixel_spacing,
        **{name: getattr(lowest, name) for name in _VOLUME_FIELDS},
    )


def _split_by_grid(headers: list[FileHeader]) -> list[_Group]:
    """Split by orientation (clustered within tolerance), size, pixel spacing and echo."""
    centres: list[np.ndarray] = []
    buckets: dict[tuple[Any, ...], list[FileHeader]] = defaultdict(list)
    for h in headers:
        index = _orientation_cluster(np.asarray(h.orientation, dtype=np.float64), centres)
        spacing = tuple(round(v, 4) for v in h.pixel_spacing) if h.pixel_spacing else None
        buckets[(index, h.rows, h.columns, spacing, h.echo)].append(h)
    groups = []
    for (index, rows, cols, spacing, echo), members in buckets.items():
        labels = {
            "orientation": plane_name(centres[index]),
            "size": f"{rows}x{cols}",
            "spacing": f"{spacing[0]:g}x{spacing[1]:g} mm" if spacing else "no spacing",
            "echo": f"echo {echo}",
        }
        groups.append(_Group(members, labels=labels))
    return groups


def _orientation_cluster(iop: np.ndarray, centres: list[np.ndarray]) -> int:
    """Index of the first centre within tolerance of ``iop``; a new centre when none is."""
    for index, centre in enumerate(centres):
        if np.max(np.abs(iop - centre)) < _ORIENTATION_TOL:
            return index
    centres.append(iop)
    return len(centres) - 1


def _split_repeats(group: _Group, last_keys: Sequence[Any] = ()) -> list[_Group]:
    """Split a group whose positions repeat into volumes, by the first key that removes the repeats.

    AcquisitionNumber, then TemporalPositionIdentifier (parts named "acquisition 2", "time 3"), then
    what tells the volumes of a 4D series apart: diffusion b-value and direction, image kind
    (magnitude/phase/real/imaginary), echo time, acquisition time, then all of these together
    (parts named by :func:`_label_volumes`), then ``last_keys``.
    """
    if not _has_repeats(group.headers):
        return [group]
    for attribute, label in (("acquisition", "acquisition"), ("temporal_position", "time")):
        parts: dict[int | None, list[FileHeader]] = defaultdict(list)
        for h in group.headers:
            parts[getattr(h, attribute)].append(h)
        if len(parts) > 1 and not any(_has_repeats(members) for members in parts.values()):
            split = [
                _Group(members, labels={**group.labels, attribute: f"{label} {value}"})
                for value, members in sorted(parts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
            ]
            _label_volumes(split)
            for g in split:
                g.labels.pop("volume", None)  # the acquisition or time already names each part
            return split
    # else the loader reports the duplicates
    return _split_by_keys(group, (*_VOLUME_KEYS, *last_keys)) or [group]


def _split_by_keys(group: _Group, keys: Sequence[Any]) -> list[_Group] | None:
    """Split by the first key (a function of a header) that removes the repeated positions, or None."""
    for key in keys:
        by_key: dict[tuple[Any, ...], list[FileHeader]] = defaultdict(list)
        for h in group.headers:
            by_key[key(h)].append(h)
        if len(by_key) > 1 and not any(_has_repeats(members) for members in by_key.values()):
            split = [
                _Group(sorted(members, key=lambda h: str(h.path)), labels=dict(group.labels))
                for members in sorted(by_key.values(), key=lambda m: min(_acquisition_order(h) for h in m))
            ]
            _label_volumes(split)
            return split
    return None


def _frame_volumes(
    header: FileHeader, found: tuple[list[FileHeader], list[tuple[Any, ...]]] | None = None
) -> list[_Group]:
    """The volumes of a multi-frame file: one, unless an Enhanced MR file's frames repeat positions.

    Then its frames are split like the files of a single-frame 4D series (see
    :mod:`medres3d.io.dicom.framesplit`): by diffusion, image kind, echo time, TemporalPositionIndex,
    the DimensionIndexValues that are not a position in the stack, then all together. Each volume
    is a part whose header carries that volume's values and whose ``frames`` select its frames.
    Only Enhanced MR is read here (its functional groups, once: the load reuses them): the 4D
    kinds are MR ones, and a large Enhanced CT keeps its scan cost. ``found``: the file's
    :func:`~medres3d.io.dicom.framesplit.frame_headers`, when the caller has read them.
    """
    whole = [_Group([header], labels={"file": header.path.name})]
    if not header.is_enhanced or header.modality != "MR" or header.frames < 2:
        return whole
    from medres3d.io.dicom.framesplit import frame_headers

    if found is None:
        try:
            found = frame_headers(header)
        except MedRes3DError:
            return whole  # the load names what is wrong with its geometry
    if found is None or not _has_repeats(found[0]):
        return whole
    frames, dims = found
    keys = (
        _diffusion_key,
        lambda h: (h.image_kind,),
        lambda h: (h.echo_time,),
        lambda h: (h.temporal_position,),
        lambda h: dims[h.instance_number],
        lambda h: (*_diffusion_key(h), h.image_kind, h.echo_time, h.temporal_position,
                   dims[h.instance_number]),
    )
    split = _split_by_keys(_Group(frames, labels=dict(whole[0].labels)), keys)
    if split is None:
        return whole  # nothing tells the repeats apart: the loader reports them (conflicting-duplicate)
    return [
        _Group(
            [header.with_values(**{name: getattr(g.headers[0], name) for name in _VOLUME_FIELDS})],
            labels=g.labels,
            frames=tuple(sorted(h.instance_number for h in g.headers)),  # type: ignore[misc]
        )
        for g in split
    ]


def _diffusion_key(h: FileHeader) -> tuple[Any, ...]:
    gradient = tuple(round(v, 3) for v in h.gradient) if h.gradient is not None and h.b_value else None
    return (h.b_value, gradient)


# Keys that tell the volumes of one series apart, tried in this order, then all together.
_VOLUME_KEYS = (
    _diffusion_key,
    lambda h: (h.image_kind,),
    lambda h: (h.echo_time,),
    lambda h: (h.acquisition_time,),
    lambda h: (*_diffusion_key(h), h.image_kind, h.echo_time, h.acquisition_time),
)


def _has_repeats(headers: list[FileHeader]) -> bool:
    if len(headers) < 2:
        return False
    depth = np.sort(_depths(headers))
    spacing = min(headers[0].pixel_spacing or (1.0, 1.0))
    return bool(np.any(np.diff(depth) < 0.01 * spacing))


def _mark_orientation_outliers(groups: list[_Group]) -> None:
    largest = max((len(g.headers) for g in groups), default=0)
    big_orientations = {g.labels["orientation"] for g in groups if len(g.headers) == largest}
    for g in groups:
        small = len(g.headers) <= _OUTLIER_MAX_FILES and len(g.headers) * _OUTLIER_RATIO <= largest
        if small and g.labels["orientation"] not in big_orientations:
            g.is_localizer = True
            g.labels["localizer"] = "localizer"


def plane_name(iop: Sequence[float]) -> str:
    """The plane's name after the slice normal's main axis; "oblique ..." when tilted more than ~25 deg.

    Example:
        >>> plane_name((1, 0, 0, 0, 0, -1))
        'coronal'
    """
    normal = np.abs(np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float)))
    name = ("sagittal", "coronal", "axial")[int(np.argmax(normal))]
    return name if normal.max() > 0.9 else f"oblique {name}"


def _name_parts(uid: str, groups: list[_Group]) -> list[DicomSeries]:
    # Only the attributes that differ between the parts of one uid name them.
    varying = [
        attr
        for attr in (
            "file",
            "localizer",
            "orientation",
            "size",
            "spacing",
            "echo",
            "acquisition",
            "temporal_position",
            "diffusion",
            "kind",
            "echo_time",
            "volume",
        )
        if len({g.labels.get(attr, "") for g in groups}) > 1
    ]
    images = [g for g in groups if not g.is_localizer]
    localizer_files = sum(len(g.headers) for g in groups if g.is_localizer)
    out = []
    for g in groups:
        part = ", ".join(g.labels[a] for a in varying if g.labels.get(a)) if len(groups) > 1 else ""
        notes: tuple[str, ...] = ()
        if localizer_files and not g.is_localizer and len(images) >= 1:
            notes = (
                f"localizer-excluded: {localizer_files} localizer file(s) of this series (ImageType "
                "LOCALIZER, or a few slices in another orientation) are not part of the volume",
            )
        out.append(_make_series(uid, g, part, notes))
    return out


def _make_series(uid: str, group: _Group, part: str, notes: tuple[str, ...]) -> DicomSeries:
    headers = sorted(group.headers, key=lambda h: str(h.path))
    first = headers[0]
    files = [h.path for h in headers]
    folder = Path(os.path.commonpath([str(p.parent) for p in files]))
    rows, columns = first.rows, first.columns
    num_frames = len(group.frames) if group.frames else sum(h.frames for h in headers)
    if len(headers) == 1 and first.is_mosaic and first.mosaic_images:
        # a Siemens mosaic is one volume of NumberOfImagesInMosaic slices, tiles of a square grid
        # (counted as one 1-image file, --min-slices dropped every mosaic and a 4D series'
        # voxels were overstated by the grid's area)
        tiles = math.ceil(math.sqrt(first.mosaic_images))
        rows, columns, num_frames = first.rows // tiles, first.columns // tiles, first.mosaic_images
    return DicomSeries(
        uid=uid,
        modality=first.modality,
        description=first.description,
        files=files,
        series_number=first.series_number,
        patient_id=first.patient_id,
        study_uid=first.study_uid,
        is_localizer=group.is_localizer,
        folder=folder,
        part=part,
        rows=rows,
        columns=columns,
        num_frames=num_frames,
        notes=notes,
        headers=tuple(headers),
        frames=group.frames,
    )
