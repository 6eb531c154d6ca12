"""Batch inference over a folder tree: every DICOM image series and NIfTI file, one result row each.

:func:`discover` finds the scans (DICOM series by header scan, recursive; ``.nii``/``.nii.gz``
files) and applies the selection options; :func:`run_batch` classifies them with loader worker
processes overlapping the network, writing one row per scan as soon as it is done (see
:mod:`medres3d.inference.batch_output` and ``docs/batch_output.md``). A scan that fails becomes an
``error`` row and the batch goes on. Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) rank ``r``
takes scans ``i`` with ``i % world == r`` into its own part file; after a barrier (gloo) rank 0
merges the parts, in discovery order, into the one output file.

Example:
    >>> summary = run_batch("model.safetensors", "incoming/", "results.csv", workers=2)  # doctest: +SKIP
    >>> summary.ok, summary.errors                                                      # doctest: +SKIP
    (118, 2)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from medres3d._atomic import write_atomically
from medres3d._progress import progress_bar
from medres3d.errors import ConfigError
from medres3d.inference.batch_output import ResultWriter, format_for, read_results, result_columns

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DEFAULT_SCAN_TIMEOUT = 600.0
"""Seconds a loader worker may spend loading and preprocessing one scan in :func:`run_batch`."""


@dataclass(frozen=True)
class BatchItem:
    """One scan of a batch: its stable id, what to load, and the identifiers written in its row."""

    id: str
    scan: Any  # a Path (NIfTI file) or a DicomSeries
    path: str
    series_uid: str = ""
    study_uid: str = ""
    patient_id: str = ""
    modality: str = ""
    description: str = ""
    num_slices: int | None = None

    def identifiers(self) -> dict[str, Any]:
        """The identifier columns of this item's row."""
        return {
            "id": self.id,
            "path": self.path,
            "series_uid": self.series_uid,
            "study_uid": self.study_uid,
            "patient_id": self.patient_id,
            "modality": self.modality,
            "description": self.description,
            "num_slices": self.num_slices,
        }


@dataclass
class Discovery:
    """What :func:`discover` found: the items to classify and what was left out, with reasons."""

    items: list[BatchItem]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): not an image series
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (item id, reason): selection options


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return path.as_posix()


def _nifti_slices(path: Path) -> int | None:
    import nibabel as nib

    if not path.is_file():  # a FIFO would block discovery; the load in a worker reports it
        return None
    try:
        shape = nib.load(path).shape  # header only
    except Exception:  # unreadable: the load in the batch reports the real reason as an error row
        return None
    return int(shape[2]) if len(shape) >= 3 else 1


def discover(
    root: str | os.PathLike[str],
    *,
    modality: str | None = None,
    series_description: str | None = None,
    min_slices: int | None = None,
    include_localizers: bool = False,
    workers: int | None = None,
) -> Discovery:
    """Find every DICOM image series and NIfTI file under ``root`` (recursive), in a stable order.

    Args:
        root: the folder to search (or one file).
        modality: keep DICOM series of this modality only (e.g. "CT"; case-insensitive).
        series_description: keep DICOM series whose description matches this regular expression
            (``re.search``, case-insensitive).
        min_slices: keep scans with at least this many slices (DICOM images, or a NIfTI's 3rd axis).
        include_localizers: keep localizer/scout series (left out by default).
        workers: header-reading workers for the DICOM scan (None: automatic).

    ``modality`` and ``series_description`` concern DICOM series only: NIfTI files carry neither.

    Example:
        >>> found = discover("incoming/", modality="CT", min_slices=20)   # doctest: +SKIP
        >>> [item.id for item in found.items][:2]                         # doctest: +SKIP
        ['p1/ct#1.2.840...', 'p2/scan.nii.gz']
    """
    from medres3d.io.dicom import scan_dicom_tree

    root = Path(root)
    if min_slices is not None and (not isinstance(min_slices, int) or min_slices < 1):
        raise ConfigError(f"min_slices must be a positive integer, got {min_slices!r}")
    try:
        pattern = re.compile(series_description, re.IGNORECASE) if series_description else None
    except re.error as err:
        raise ConfigError(
            f"series_description {series_description!r} is not a valid regular expression: {err}"
        ) from err

    scan = scan_dicom_tree(root, recursive=True, workers=workers)
    found = Discovery(items=[])
    for series in scan.series:
        item = BatchItem(
            id=f"{_relative(series.folder, root)}#{series.key}",
            scan=series,
            path=str(series.folder),
            series_uid=series.uid,
            study_uid=series.study_uid,
            patient_id=series.patient_id,
            modality=series.modality,
            description=series.description,
            num_slices=series.num_frames or series.num_files,
        )
        reason = _excluded_series(series, item, modality, pattern, min_slices, include_localizers)
        if reason:
            found.excluded.append((item.id, reason))
        else:
            found.items.append(item)
    niftis = {Path(s.path) for s in scan.skipped if _is_nifti(Path(s.path))}
    if root.is_file() and _is_nifti(root):
        niftis.add(root)
    for path in sorted(niftis):
        item = BatchItem(id=_relative(path, root), scan=path, path=str(path), num_slices=_nifti_slices(path))
        if min_slices is not None and item.num_slices is not None and item.num_slices < min_slices:
            found.excluded.append((item.id, f"{item.num_slices} slices < --min-slices {min_slices}"))
        else:
            found.items.append(item)
    found.skipped = [(str(s.path), s.reason) for s in scan.skipped if Path(s.path) not in niftis]
    return found


def discover_listed(listing: str | os.PathLike[str], channels: Sequence[str] | None = None) -> Discovery:
    """The scans a CSV lists, one per row: ``path``, or one column per channel of a multi-sequence model.

    ``channels`` are the model's channel names (its preprocessing spec's ``channels``): each row
    then names one file per channel in those columns (a multi-sequence scan, loaded as one input);
    without them each row names one file or DICOM folder in ``path``. An optional ``id`` column
    gives each row's id (default: the first path, relative to the CSV's folder, where relative
    paths are resolved too). A missing file is not checked here: its row becomes an error row.

    Raises:
        ConfigError: the CSV cannot be read, lacks a needed column, or has an empty cell or
            repeated ids (the message names the file, the row and the column).

    Example:
        >>> found = discover_listed("scans.csv", ["t1", "t2"])   # doctest: +SKIP
        >>> found.items[0].scan                                  # doctest: +SKIP
        [PosixPath('/data/p1/t1.nii.gz'), PosixPath('/data/p1/t2.nii.gz')]
    """
    import csv

    listing = Path(listing)
    columns = list(channels) if channels else ["path"]
    try:
        with open(listing, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = [name.strip() for name in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{listing}: cannot read the scan list: {err}") from err
    missing = [name for name in columns if name not in header]
    if not rows or missing:
        raise ConfigError(f"{listing}: the scan list needs a header and the column(s) {columns} "
                          f"(the model's {'channels' if channels else 'single input'}); "
                          f"missing {missing or columns}, found {header}")
    found = Discovery(items=[])
    seen: set[str] = set()
    for number, row in enumerate(rows, start=2):  # row 1 is the header, as a spreadsheet counts
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        empty = [name for name in columns if not row[name]]
        if empty:
            raise ConfigError(f"{listing}: row {number}: empty {', '.join(empty)}")
        paths = [Path(row[name]) if Path(row[name]).is_absolute() else listing.parent / row[name]
                 for name in columns]
        item_id = row.get("id") or row[columns[0]]
        if item_id in seen:
            raise ConfigError(f"{listing}: row {number}: id {item_id!r} is used by an earlier row")
        seen.add(item_id)
        scan: Any = paths if channels else paths[0]
        found.items.append(BatchItem(id=item_id, scan=scan, path=";".join(map(str, paths))))
    return found


def _excluded_series(
    series: Any,
    item: BatchItem,
    modality: str | None,
    pattern: re.Pattern[str] | None,
    min_slices: int | None,
    include_localizers: bool,
) -> str | None:
    if series.is_localizer and not include_localizers:
        return "localizer (use --include-localizers to keep it)"
    if modality and series.modality.upper() != modality.upper():
        return f"modality {series.modality!r} is not {modality!r}"
    if pattern is not None and not pattern.search(series.description or ""):
        return f"description {series.description!r} does not match {pattern.pattern!r}"
    if min_slices is not None and (item.num_slices or 0) < min_slices:
        return f"{item.num_slices} slices < --min-slices {min_slices}"
    return None


@dataclass
class BatchSummary:
    """Counts of a batch run (for this rank; rank 0 of a torchrun batch also reports the merged file)."""

    out: str
    total: int = 0  # items selected (all ranks)
    done_before: int = 0  # this rank's items already in the output when resuming
    ok: int = 0  # classified by this run on this rank
    errors: int = 0  # error rows written by this run on this rank
    ok_in_output: int = 0  # ok rows in the final output (rank 0), or in this rank's part
    excluded: int = 0
    skipped_files: int = 0
    rank: int = 0
    world_size: int = 1
    warmup_seconds: float = 0.0  # one-time imports and first forward pass, not in any row's seconds

    @property
    def exit_code(self) -> int:
        """1 when the output holds no ``ok`` row (nothing could be processed), else 0.

        Under torchrun only rank 0, which sees the merged file, can return 1.
        """
        if self.rank != 0:
            return 0
        return 0 if self.ok_in_output > 0 else 1


def part_path(out: Path, rank: int, world: int) -> Path:
    """The part file rank ``rank`` of ``world`` writes beside ``out``.

    Example:
        >>> part_path(Path("r/results.csv"), 1, 4).name
        'results.csv.part1-of-4'
    """
    return out.with_name(f"{out.name}.part{rank}-of-{world}")


def _rows(
    items: list[BatchItem], predictions: Iterator[Any], class_names: list[str]
) -> Iterator[dict[str, Any]]:
    for item, prediction in zip(items, predictions, strict=True):
        row = {
            **item.identifiers(),
            "status": prediction.status,
            "error": prediction.error,
            "label": prediction.label,
            "num_windows": prediction.num_windows if prediction.ok else None,
            "seconds": round(prediction.seconds, 3),
            "warnings": "; ".join(prediction.warnings),
        }
        for name in class_names:
            row[f"p_{name}"] = prediction.probabilities.get(name)
        yield row


def run_batch(
    model: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    resume: bool = False,
    workers: int = 2,
    scan_timeout: float | None = DEFAULT_SCAN_TIMEOUT,
    device: str = "auto",
    modality: str | None = None,
    series_description: str | None = None,
    min_slices: int | None = None,
    include_localizers: bool = False,
    fsync: bool = False,
    progress: bool = True,
    classifier_options: dict[str, Any] | None = None,
) -> BatchSummary:
    """Classify every selected scan under ``root`` into one results file ``out``.

    Args:
        model: the model file (or export folder), or a list of them: an ensemble.
        root: the folder tree to search (see :func:`discover` for the selection options), or a
            CSV listing the scans (see :func:`discover_listed`; needed for multi-sequence models).
        out: results file (CSV, or JSON lines with ``fmt="jsonl"`` or a ``.jsonl`` name).
        resume: keep ``out``'s rows and classify only the scans not in it yet.
        workers: loader processes preparing upcoming scans while the network runs (0: none).
        scan_timeout: seconds a loader process may spend loading and preprocessing one scan;
            past it the process is killed, the scan gets an ``error`` row ("timed out after N s")
            and the batch goes on (None or 0: no limit). Not enforced with ``workers=0``, where
            scans load in this process and a blocked read cannot be interrupted.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:K"``; under torchrun with CUDA each rank
            uses ``cuda:LOCAL_RANK``.
        fsync: force every row to disk (power-loss safety; slower on some file systems).
        progress: show a progress bar with ETA on stderr (rank 0 only).
        classifier_options: passed to :class:`~medres3d.inference.classifier.Classifier`
            (overlap, batch_size, aggregate, negative_class...), e.g. ``{"aggregate": "any"}``.

    Raises:
        OutputWriteError: the results file cannot be written (rows already written are intact).
        ModelFileError, NormalizationNotFittedError: the model cannot be used.

    Example:
        >>> run_batch("model.safetensors", "incoming/", "out.csv", resume=True).exit_code  # doctest: +SKIP
        0
    """
    from medres3d.inference.classifier import Classifier
    from medres3d.inference.loader_pool import validate_timeout
    from medres3d.runtime import join_process_group, process_place, resolve_device

    scan_timeout = validate_timeout(scan_timeout)  # before the output file is touched
    out = Path(out)
    fmt = format_for(out, fmt)
    place = process_place()
    rank, world = place.rank, place.world_size
    target = resolve_device(device)
    if place.distributed and target.type == "cuda":
        target = resolve_device(f"cuda:{place.local_rank}")
    if place.distributed:
        # gloo on the CPU for the barrier whatever the device; a batch may run for many hours
        join_process_group("gloo", timedelta(hours=48))
    clf = Classifier.load(model, device=target, evidence=False, **(classifier_options or {}))
    channels = getattr(clf.preprocessing, "channels", None)
    if channels and not Path(root).is_file():
        raise ConfigError(f"{root}: the model takes {len(channels)} files per scan ({', '.join(channels)}): "
                          "give a CSV listing the scans, one column per channel (docs/batch_output.md)")
    if Path(root).suffix.lower() == ".csv" or channels:
        # a multi-sequence scan is several files: only a list says which belong together
        found = discover_listed(root, channels)
    else:
        found = discover(
            root,
            modality=modality,
            series_description=series_description,
            min_slices=min_slices,
            include_localizers=include_localizers,
        )
    columns = result_columns(clf.class_names)
    summary = BatchSummary(
        out=str(out),
        total=len(found.items),
        excluded=len(found.excluded),
        skipped_files=len(found.skipped),
        rank=rank,
        world_size=world,
    )
    previous: dict[str, str] = {}
    if resume and world > 1 and out.exists():
        previous = {row["id"]: row["status"] for row in read_results(out, fmt)}
    writer = ResultWriter(
        part_path(out, rank, world) if world > 1 else out, columns, fmt, resume=resume, fsync=fsync
    )
    with writer:
        previous.update(writer.done)
        mine = [item for index, item in enumerate(found.items) if index % world == rank]
        todo = [item for item in mine if item.id not in previous]
        summary.done_before = len(mine) - len(todo)
        summary.ok_in_output = sum(previous.get(item.id) == "ok" for item in mine)
        predictions = clf.predict_many((item.scan for item in todo), workers=workers, timeout=scan_timeout)
        with progress_bar(progress and rank == 0, eta=True) as bar:
            task = bar.add_task("classifying", total=len(todo)) if bar is not None else None
            for row in _rows(todo, predictions, clf.class_names):
                writer.write(row)
                summary.ok += row["status"] == "ok"
                summary.errors += row["status"] == "error"
                if bar is not None:
                    bar.advance(task)
    summary.ok_in_output += summary.ok
    summary.warmup_seconds = clf.warmup_seconds or 0.0
    if world > 1:
        _finish_distributed(out, fmt, columns, found.items, rank, world, resume, summary)
    return summary


def _finish_distributed(
    out: Path,
    fmt: str,
    columns: list[str],
    items: list[BatchItem],
    rank: int,
    world: int,
    resume: bool,
    summary: BatchSummary,
) -> None:
    import torch.distributed as dist

    dist.barrier()  # every part file is complete
    if rank == 0:
        merged = merge_parts(out, fmt, columns, [item.id for item in items], world, keep_existing=resume)
        summary.ok_in_output = sum(row["status"] == "ok" for row in merged)
    dist.barrier()  # the merged file exists before any rank returns
    dist.destroy_process_group()


def merge_parts(
    out: Path, fmt: str, columns: list[str], order: list[str], world: int, *, keep_existing: bool
) -> list[dict[str, Any]]:
    """Merge the ranks' part files (and, when resuming, ``out``'s rows) into ``out``, atomically.

    Rows are put in discovery order (``order``: item ids), one per id; the part files are removed
    once ``out`` is in place.
    """
    parts = [part_path(out, rank, world) for rank in range(world)]
    by_id: dict[str, dict[str, Any]] = {}
    if keep_existing and out.exists():
        by_id.update((row["id"], row) for row in read_results(out, fmt))
    for part in parts:
        if part.exists():
            by_id.update((row["id"], row) for row in read_results(part, fmt))
    position = {item_id: index for index, item_id in enumerate(order)}
    rows = sorted(by_id.values(), key=lambda row: position.get(row["id"], len(position)))
    def write(temporary: str) -> None:
        with ResultWriter(Path(temporary), columns, fmt) as writer:
            for row in rows:
                writer.write(row)

    write_atomically(out, write, "merged results")
    for part in parts:
        part.unlink(missing_ok=True)
    return rows
