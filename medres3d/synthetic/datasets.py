"""Ready-made synthetic data sets: a labelled phantom collection with a manifest, and a messy DICOM tree.

Example:
    >>> import tempfile
    >>> from medres3d.synthetic import make_phantom_dataset
    >>> manifest = make_phantom_dataset(tempfile.mkdtemp(), n=4, shape=(24, 24, 16))
    >>> manifest.read_text().splitlines()[0]
    'path,label,split'
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medres3d.errors import ConfigError
from medres3d.synthetic.dicom_common import new_uid
from medres3d.synthetic.dicom_objects import write_non_image_object
from medres3d.synthetic.dicom_writer import write_dicom_series, write_localizer
from medres3d.synthetic.geometry import centered_origin, make_affine
from medres3d.synthetic.nifti_writer import write_nifti
from medres3d.synthetic.phantoms import ct_phantom, mri_phantom

CLASS_NAMES = ("normal", "lesion")
_SPLITS = ("train", "val", "test")


def make_phantom_dataset(
    root: str | os.PathLike[str],
    n: int = 20,
    *,
    shape: Sequence[int] = (32, 32, 32),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    modality: str = "CT",
    file_format: str = "nifti",
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    lesion_radius_mm: tuple[float, float] = (4.0, 8.0),
    lesion_contrast: tuple[float, float] = (60.0, 120.0),
    size_jitter: float = 0.0,
    body_shape: Sequence[int] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``n`` phantoms, half with a lesion, and a ``manifest.csv`` (``path,label,split``).

    Labels are "normal" and "lesion"; each lesion has a random radius and contrast within the given
    ranges (HU for CT, relative signal x 1/100 for MR) at a random position. Splits are stratified by
    label. Paths in the manifest are relative to ``root``.

    Args:
        root: output folder (created).
        n: number of volumes (>= 2).
        shape, spacing: of every volume.
        modality: "CT" (:func:`ct_phantom`) or "MR" (:func:`mri_phantom`).
        file_format: "nifti" (``.nii.gz`` files) or "dicom" (one series folder per volume).
        split_fractions: train, val, test fractions (non-negative, summing to 1).
        lesion_radius_mm, lesion_contrast: (low, high) ranges sampled uniformly.
        size_jitter: each volume's shape is ``shape`` times a random factor in ``[1 - j, 1 + j]`` per
            axis (0 <= j < 0.5), so the set holds several sizes, as real scans do.
        body_shape: when given, each phantom is drawn at this (larger) shape and a ``shape`` window is
            cut from it at a random place (one that holds the whole lesion, for lesion cases), with the
            affine of that place: the cases then look like windows of a full-size scan, which is what a
            sliding-window classifier sees at inference.
        seed: makes the data set reproducible.

    Returns:
        The manifest path.

    Example:
        >>> import tempfile, csv
        >>> m = make_phantom_dataset(tempfile.mkdtemp(), n=6, shape=(20, 20, 12))
        >>> sorted({row["label"] for row in csv.DictReader(m.open())})
        ['lesion', 'normal']
    """
    if n < 2:
        raise ConfigError(f"n must be at least 2 (one per class), got {n!r}")
    if modality not in ("CT", "MR"):
        raise ConfigError(f"modality must be 'CT' or 'MR', got {modality!r}")
    if file_format not in ("nifti", "dicom"):
        raise ConfigError(f"file_format must be 'nifti' or 'dicom', got {file_format!r}")
    fractions = np.asarray(split_fractions, dtype=float)
    if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ConfigError(
            f"split_fractions must be three non-negative numbers summing to 1, got {split_fractions!r}"
        )
    if not 0.0 <= size_jitter < 0.5:
        raise ConfigError(f"size_jitter must be in [0, 0.5), got {size_jitter!r}")
    if body_shape is not None and any(b < s for b, s in zip(body_shape, shape, strict=True)):
        raise ConfigError(
            f"body_shape {tuple(body_shape)} must be at least shape {tuple(shape)} on every axis"
        )
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.array([i % 2 for i in range(n)])
    splits = np.empty(n, dtype=object)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.rint(np.cumsum(fractions) * len(members)).astype(int)
        for split, chunk in zip(_SPLITS, np.split(members, bounds[:2]), strict=True):
            splits[chunk] = split
    rows = []
    for index in range(n):
        has_lesion = bool(labels[index])
        factors = rng.uniform(1.0 - size_jitter, 1.0 + size_jitter, size=3)
        case_shape = tuple(max(4, round(s * f)) for s, f in zip(shape, factors, strict=True))
        drawn_shape = case_shape if body_shape is None else tuple(int(b) for b in body_shape)
        affine = centered_origin(drawn_shape, make_affine(spacing))
        radius = float(rng.uniform(*lesion_radius_mm))
        contrast = float(rng.uniform(*lesion_contrast))
        case_seed = int(rng.integers(2**31))
        if modality == "CT":
            volume, mask = ct_phantom(
                drawn_shape,
                spacing=spacing,
                lesion=has_lesion,
                lesion_radius_mm=radius,
                lesion_hu=contrast,
                seed=case_seed,
                return_mask=True,
            )
        else:
            volume, mask = mri_phantom(
                drawn_shape,
                spacing=spacing,
                lesion=has_lesion,
                lesion_radius_mm=radius,
                lesion_contrast=contrast / 100.0,
                seed=case_seed,
                return_mask=True,
            )
        if body_shape is not None:
            window = tuple(min(c, d) for c, d in zip(case_shape, drawn_shape, strict=True))
            volume, affine = _random_window(volume, mask, affine, window, rng)
        name = f"case{index:04d}_{CLASS_NAMES[has_lesion]}"
        if file_format == "nifti":
            write_nifti(volume, affine, out / f"{name}.nii.gz")
            rel = f"{name}.nii.gz"
        else:
            write_dicom_series(volume, affine, out / name, modality=modality, patient_id=name, seed=case_seed)
            rel = name
        rows.append((rel, CLASS_NAMES[has_lesion], splits[index]))
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return manifest


def _random_window(
    volume: np.ndarray, mask: np.ndarray, affine: np.ndarray, shape: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``shape`` window of ``volume`` at a random place holding all of ``mask``, and its affine."""
    lo = np.zeros(3, dtype=int)
    hi = np.array(volume.shape) - np.array(shape)
    if mask.any():
        found = np.argwhere(mask)
        # Window start s must satisfy s <= first lesion voxel and s + shape > last lesion voxel.
        lo = np.maximum(lo, found.max(axis=0) + 1 - np.array(shape))
        hi = np.minimum(hi, found.min(axis=0))
    start = np.array([rng.integers(a, max(a, b) + 1) for a, b in zip(lo, hi, strict=True)])
    window = tuple(slice(a, a + n) for a, n in zip(start, shape, strict=True))
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return volume[window], shifted


@dataclass
class WrittenSeries:
    """One series written into a messy tree, and what a correct scanner should conclude about it."""

    uid: str
    folder: Path
    files: list[Path]
    modality: str
    label: str | None  # "lesion" / "normal" for phantom series, None for the broken one
    shape: tuple[int, int, int]
    broken: bool = False


@dataclass
class MessyTree:
    """What :func:`make_messy_dicom_tree` wrote (the expected answer of a series scan)."""

    root: Path
    series: list[WrittenSeries] = field(default_factory=list)
    localizers: list[Path] = field(default_factory=list)
    non_image: list[Path] = field(default_factory=list)  # SEG, SR, DICOMDIR
    non_dicom: list[Path] = field(default_factory=list)

    @property
    def good_series(self) -> list[WrittenSeries]:
        """The series that load into a volume."""
        return [s for s in self.series if not s.broken]


def make_messy_dicom_tree(
    root: str | os.PathLike[str],
    *,
    shape: Sequence[int] = (32, 32, 16),
    spacing: Sequence[float] = (1.0, 1.0, 2.0),
    seed: int = 0,
) -> MessyTree:
    """Write a DICOM tree as found on a hospital share.

    Layout: ``study1/mixed/`` holds two CT series of one study (one with a lesion, shuffled names) plus
    a localizer sharing the first series' UID, a SEG and an SR; ``study1/notes.txt`` is not DICOM;
    ``study2/mr/`` holds an MR series; ``broken/`` holds a CT series whose every file is truncated inside
    its pixel data (headers readable, voxels not); ``DICOMDIR`` sits at the top. ``root`` must be
    new or empty. The two CT series of study1 cover the same body (``shape`` x ``spacing`` mm), the
    second one on a finer in-plane and coarser slice grid.

    Example:
        >>> import tempfile
        >>> tree = make_messy_dicom_tree(tempfile.mkdtemp(), shape=(16, 16, 6))
        >>> len(tree.series), len(tree.good_series)
        (4, 3)
    """
    out = Path(root)
    if out.exists() and any(out.iterdir()):
        # Series already there would join the scan and make the returned answer wrong.
        raise ConfigError(f"root {out} must be a new or empty folder for a messy tree")
    shape3 = tuple(int(s) for s in shape)
    tree = MessyTree(root=out)
    study = new_uid()
    frame = new_uid()
    mixed = out / "study1" / "mixed"

    spacing_a = np.asarray(spacing, dtype=float)
    spacing_b = spacing_a * [0.8, 0.8, 1.5]
    shape_b = tuple(max(4, round(n * a / b)) for n, a, b in zip(shape3, spacing_a, spacing_b, strict=True))
    lesion_ct = ct_phantom(shape3, spacing=spacing_a, lesion=True, lesion_hu=100.0, seed=seed)
    uid_a = new_uid()
    affine_a = centered_origin(shape3, make_affine(spacing_a))
    files = write_dicom_series(
        lesion_ct,
        affine_a,
        mixed,
        series_uid=uid_a,
        study_uid=study,
        frame_of_reference_uid=frame,
        series_number=2,
        description="CT abdomen lesion",
        patient_id="MESSY01",
        shuffle_instance_numbers=True,
    )
    tree.series.append(WrittenSeries(uid_a, mixed, files, "CT", "lesion", shape3))
    tree.localizers.append(
        write_localizer(
            mixed, series_uid=uid_a, study_uid=study, frame_of_reference_uid=frame, patient_id="MESSY01"
        )
    )

    normal_ct = ct_phantom(shape_b, spacing=spacing_b, seed=seed + 1)
    uid_b = new_uid()
    files = write_dicom_series(
        normal_ct,
        centered_origin(shape_b, make_affine(spacing_b)),
        mixed,
        series_uid=uid_b,
        study_uid=study,
        frame_of_reference_uid=frame,
        series_number=3,
        description="CT thin normal",
        patient_id="MESSY01",
    )
    tree.series.append(WrittenSeries(uid_b, mixed, files, "CT", "normal", shape_b))
    tree.non_image.append(
        write_non_image_object("SEG", mixed / "seg.dcm", study_uid=study, patient_id="MESSY01")
    )
    tree.non_image.append(
        write_non_image_object("SR", mixed / "report", study_uid=study, patient_id="MESSY01")
    )
    notes = out / "study1" / "notes.txt"
    notes.write_text("Scanned at 10:32, contrast given.\n")
    tree.non_dicom.append(notes)

    mr = mri_phantom(shape3, seed=seed + 2)
    uid_c = new_uid()
    mr_folder = out / "study2" / "mr"
    files = write_dicom_series(
        mr,
        centered_origin(shape3, make_affine((1.0, 1.0, 1.0), "sagittal")),
        mr_folder,
        modality="MR",
        series_uid=uid_c,
        description="MR T1 sagittal",
        patient_id="MESSY02",
    )
    tree.series.append(WrittenSeries(uid_c, mr_folder, files, "MR", "normal", shape3))

    uid_d = new_uid()
    broken_folder = out / "broken"
    files = write_dicom_series(
        ct_phantom(shape3, seed=seed + 3),
        centered_origin(shape3, make_affine()),
        broken_folder,
        series_uid=uid_d,
        description="CT truncated transfer",
        patient_id="MESSY03",
    )
    pixel_bytes = 2 * shape3[0] * shape3[1]
    for path in files:
        # Cut inside the pixel data: the header still parses, the voxels are incomplete.
        path.write_bytes(path.read_bytes()[: -pixel_bytes // 2])
    tree.series.append(WrittenSeries(uid_d, broken_folder, files, "CT", None, shape3, broken=True))

    tree.non_image.append(write_non_image_object("DICOMDIR", out / "DICOMDIR"))
    return tree
