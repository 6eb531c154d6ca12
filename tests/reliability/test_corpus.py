"""The bad-input corpus: every damaged or hostile scan gives one exact project error, never a crash.

Each case builds one input under ``tmp_path`` and loads it with :func:`medres3d.load_volume`. The
test asserts the exact error type (not a subclass, not a parent), that the error's ``path`` and
message name the offending file, and that the reason says what is wrong. Every case runs under
a timeout and ``tracemalloc`` so a hang or a header-driven allocation fails the test.
"""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import corpus as c
import numpy as np
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless

from medres3d.errors import (
    CorruptFileError,
    InvalidVoxelsError,
    NotAnImageError,
    ResourceLimitError,
    SeriesGeometryError,
    UnsupportedFormatError,
    VolumeLoadError,
)
from medres3d.io.dicom import MultipleSeriesError
from medres3d.io.readers import load_volume
from medres3d.synthetic import write_non_image_object

# No input in the corpus may make the loader hold more than this (the valid volumes are ~1 kB;
# the hostile ones claim gigabytes).
PEAK_LIMIT_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Case:
    """One bad input: how to build it, and the error a correct loader raises."""

    build: Callable[[Path], Any]  # -> the path to load, or (path to load, path the error must name)
    error: type[Exception]
    reason: str  # regex the error's reason must match
    options: dict[str, Any] = field(default_factory=dict)


def _nii(name: str, data: bytes) -> Callable[[Path], Path]:
    return lambda tmp: c.write_bytes(tmp / name, data)


def _edit_header(**fields) -> Callable:
    def edit(header):
        for key, value in fields.items():
            header[key] = value

    return edit


def _nii_tampered(name: str, data: np.ndarray, **fields) -> Callable[[Path], Path]:
    return lambda tmp: c.write_bytes(
        tmp / name, c.nifti_bytes(data, c.small_affine(), header_edit=_edit_header(**fields))
    )


def _singular_sform(header):
    header.set_sform(np.diag([1.0, 0.0, 2.0, 1.0]), code=1)


def _nan_sform(header):
    header["srow_x"] = [np.nan, 0, 0, 0]


def _truncated_nii(keep: Callable[[int], int], gz: bool = False) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        # big enough that half of the compressed stream holds the whole header
        path = c.valid_nifti(tmp / ("scan.nii.gz" if gz else "scan.nii"), shape=(32, 32, 16))
        return c.truncate(path, keep(path.stat().st_size))

    return build


def _dim_claim(name: str, dims: list[int], dtype=np.int16) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        head = bytearray(c.raw_nifti_header((4, 4, 4), dtype))
        head[c.NIFTI_DIM_OFFSET : c.NIFTI_DIM_OFFSET + 16] = np.asarray(dims, "<i2").tobytes()
        return c.write_bytes(tmp / name, bytes(head) + bytes(4 * 4 * 4 * 2))

    return build


def _series_then(edit: Callable[[list[Path]], Any], **kwargs) -> Callable[[Path], Any]:
    """A valid series in ``tmp/series``, changed by ``edit(files)``; loads the folder."""

    def build(tmp: Path):
        folder = tmp / "series"
        named = edit(c.dicom_series(folder, **kwargs))
        return (folder, named if named is not None else folder)

    return build


def _drop(keyword: str, index: int = 2) -> Callable[[list[Path]], Path]:
    def edit(files: list[Path]) -> Path:
        return c.edit_dicom(files[index], lambda ds: delattr(ds, keyword))

    return edit


def _set(index: int | None, **values) -> Callable[[list[Path]], Path | None]:
    def edit(files: list[Path]) -> Path | None:
        for n, path in enumerate(files):
            if index is None or n == index:
                c.edit_dicom(path, lambda ds: [setattr(ds, k, v) for k, v in values.items()])
        return files[index] if index is not None else None

    return edit


def _truncate_file(index: int, keep: Callable[[Path], int]) -> Callable[[list[Path]], Path]:
    def edit(files: list[Path]) -> Path:
        return c.truncate(files[index], keep(files[index]))

    return edit


def _other_size_slice(files: list[Path]) -> None:
    small = c.dicom_series(files[0].parent / "tmp", array=c.phantom((6, 6, 6)), affine=c.small_affine())
    uid = c.pydicom.dcmread(files[0]).SeriesInstanceUID

    def edit(ds):
        ds.SeriesInstanceUID = uid

    target = files[0].parent / "odd.dcm"
    small[3].rename(target)
    c.edit_dicom(target, edit)
    for leftover in small[:3] + small[4:]:
        leftover.unlink()
    small[0].parent.rmdir()


def _enhanced_then(edit: Callable[[Path], Any], **kwargs) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        path = c.enhanced_dicom(tmp / "enhanced.dcm", **kwargs)
        edit(path)
        return path

    return build


def _huge_enhanced(ds) -> None:
    ds.NumberOfFrames = 60000
    ds.Rows = ds.Columns = 60000


def _object(kind: str, name: str) -> Callable[[Path], Path]:
    return lambda tmp: write_non_image_object(kind, tmp / name)


def _no_pixel_data(tmp: Path) -> Path:
    files = c.dicom_series(tmp / "s")
    return c.edit_dicom(files[0], lambda ds: delattr(ds, "PixelData"))


def _rgb_dicom(tmp: Path) -> Path:
    files = c.dicom_series(tmp / "s")

    def edit(ds):
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = bytes(3 * ds.Rows * ds.Columns)

    return c.edit_dicom(files[0], edit)


def _corrupt_deflated(tmp: Path) -> Path:
    """A Deflated Explicit VR file whose deflate stream is damaged after the file meta."""
    path = c.dicom_series(tmp / "s", transfer_syntax=DeflatedExplicitVRLittleEndian)[0]
    data = bytearray(path.read_bytes())
    # the deflate stream starts after the file meta group, whose length is the value at 140..144;
    # a first byte of 0xFF declares the reserved block type 3
    data[144 + int.from_bytes(data[140:144], "little")] = 0xFF
    return c.write_bytes(path, bytes(data))


def _bad_meta_length(path: Path) -> None:
    """The file meta group length element (UL, 4 bytes) declares a 6-byte value."""
    data = bytearray(path.read_bytes())
    data[138:140] = (6).to_bytes(2, "little")
    path.write_bytes(bytes(data))


def _truncated_j2k(tmp: Path):
    folder = tmp / "j2k"
    array = c.ct_phantom((32, 32, 4), seed=1)
    files = c.write_dicom_series(
        array,
        c.centered_origin((32, 32, 4), c.make_affine()),
        folder,
        transfer_syntax=JPEG2000Lossless,
        shuffle_names=False,
    )
    # encapsulated pixel data: keep the header and the first half of the JPEG 2000 codestream
    start = c.pixel_data_offset(files[1])
    c.truncate(files[1], start + (files[1].stat().st_size - start) // 2)
    return folder, files[1]


CASES: dict[str, Case] = {
    # --- NIfTI: empty, truncated, garbage, gzip
    "nii-empty": Case(_nii("scan.nii", b""), CorruptFileError, r"empty \(0 bytes\)"),
    "nii-gz-empty": Case(_nii("scan.nii.gz", b""), CorruptFileError, r"empty \(0 bytes\)"),
    "nii-truncated-in-header": Case(_truncated_nii(lambda n: 200), CorruptFileError, r"header"),
    "nii-truncated-after-header": Case(_truncated_nii(lambda n: 352), CorruptFileError, r"truncated"),
    "nii-truncated-in-data": Case(_truncated_nii(lambda n: n - 100), CorruptFileError, r"truncated"),
    "nii-gz-truncated-at-10": Case(_truncated_nii(lambda n: 10, gz=True), CorruptFileError, r"header|trunc"),
    "nii-gz-truncated-in-middle": Case(_truncated_nii(lambda n: n // 2, gz=True), CorruptFileError, r"trunc"),
    "nii-gz-no-trailer": Case(_truncated_nii(lambda n: n - 6, gz=True), CorruptFileError, r"truncated"),
    "nii-garbage": Case(lambda tmp: c.garbage(tmp / "scan.nii"), CorruptFileError, r"NIfTI header"),
    "nii-gz-garbage": Case(lambda tmp: c.garbage(tmp / "scan.nii.gz"), CorruptFileError, r"not gzip"),
    "nii-gz-corrupt-deflate": Case(
        lambda tmp: c.corrupt_gzip(tmp / "s.nii.gz"), CorruptFileError, r"decompress"
    ),
    "nii-gz-bad-crc": Case(lambda tmp: c.bad_crc_gzip(tmp / "s.nii.gz"), CorruptFileError, r"CRC"),
    "nii-gz-bomb-huge-claim": Case(
        lambda tmp: c.huge_claim_gzip_bomb(tmp / "bomb.nii.gz", (4000, 4000, 4000)),
        ResourceLimitError,
        r"4000x4000x4000x1 = 64000000000 voxels, more than the limit",
    ),
    # --- NIfTI: header claims
    "nii-huge-dims": Case(
        lambda tmp: c.write_bytes(tmp / "huge.nii", c.raw_nifti_header((32767, 32767, 32767))),
        ResourceLimitError,
        r"32767x32767x32767x1 = \d+ voxels",
    ),
    "nii-huge-4d": Case(
        lambda tmp: c.write_bytes(tmp / "huge4d.nii", c.raw_nifti_header((2048, 2048, 512, 32))),
        ResourceLimitError,
        r"more than the limit max_voxels",
    ),
    "nii-over-custom-limit": Case(
        lambda tmp: c.valid_nifti(tmp / "scan.nii"),
        ResourceLimitError,
        r"max_voxels=100\b",
        {"max_voxels": 100},
    ),
    "nii-negative-dim": Case(_dim_claim("neg.nii", [3, 4, -4, 4, 1, 1, 1, 1]), CorruptFileError, r"positive"),
    "nii-zero-dim": Case(_dim_claim("zero.nii", [3, 4, 0, 4, 1, 1, 1, 1]), CorruptFileError, r"positive"),
    "nii-ndim-zero": Case(_dim_claim("nd0.nii", [0, 4, 4, 4, 1, 1, 1, 1]), CorruptFileError, r"dim\[0\]"),
    "nii-ndim-nine": Case(_dim_claim("nd9.nii", [9, 4, 4, 4, 1, 1, 1, 1]), CorruptFileError, r"dim|header"),
    "nii-zero-spacing": Case(
        _nii_tampered(
            "zsp.nii",
            c.phantom().astype(np.int16),
            sform_code=0,
            qform_code=0,
            pixdim=[1, 1, 0, 2, 1, 1, 1, 1],
        ),
        CorruptFileError,
        r"voxel size pixdim\[1:4\] is \(1\.0, 0\.0, 2\.0\), but each must be finite and positive",
    ),
    "nii-singular-sform": Case(
        lambda tmp: c.write_bytes(
            tmp / "sing.nii", c.nifti_bytes(c.phantom().astype(np.int16), header_edit=_singular_sform)
        ),
        CorruptFileError,
        r"sform affine is singular",
    ),
    "nii-nan-sform": Case(
        lambda tmp: c.write_bytes(
            tmp / "nan.nii", c.nifti_bytes(c.phantom().astype(np.int16), header_edit=_nan_sform)
        ),
        CorruptFileError,
        r"NaN/Inf",
    ),
    "nii-data-offset-beyond-end": Case(
        _nii_tampered("off.nii", c.phantom().astype(np.int16), vox_offset=10**9),
        CorruptFileError,
        r"truncated",
    ),
    # --- NIfTI: voxels and layouts
    "nii-nan-voxels": Case(
        lambda tmp: c.write_nifti(np.where(c.phantom() > 0, np.nan, 1.0), c.small_affine(), tmp / "n.nii.gz"),
        InvalidVoxelsError,
        r"voxels are NaN or infinite",
    ),
    "nii-inf-voxels": Case(
        lambda tmp: c.write_nifti(np.full(c.SHAPE, np.inf), c.small_affine(), tmp / "inf.nii"),
        InvalidVoxelsError,
        r"384 of 384 voxels are NaN or infinite",
    ),
    "nii-2d": Case(
        lambda tmp: c.write_bytes(tmp / "flat.nii", c.nifti_bytes(np.zeros((8, 8), np.int16))),
        UnsupportedFormatError,
        r"2D image",
    ),
    "nii-5d": Case(
        lambda tmp: c.write_bytes(tmp / "five.nii", c.nifti_bytes(np.zeros((4, 4, 4, 2, 3), np.int16))),
        UnsupportedFormatError,
        r"several non-spatial axes",
    ),
    "nii-complex": Case(
        lambda tmp: c.write_bytes(tmp / "cplx.nii", c.nifti_bytes(np.zeros(c.SHAPE, np.complex64))),
        UnsupportedFormatError,
        r"complex voxels",
    ),
    "nii-rgb": Case(
        lambda tmp: c.write_bytes(
            tmp / "rgb.nii",
            c.nifti_bytes(np.zeros(c.SHAPE, [("R", "u1"), ("G", "u1"), ("B", "u1")])),
        ),
        UnsupportedFormatError,
        r"RGB",
    ),
    # --- other files
    "unknown-extension": Case(
        lambda tmp: c.garbage(tmp / "scan.txt"), UnsupportedFormatError, r"unknown file"
    ),
    "missing-file": Case(lambda tmp: tmp / "nope.nii.gz", VolumeLoadError, r"no such file"),
    "mha-garbage": Case(lambda tmp: c.garbage(tmp / "scan.mha"), CorruptFileError, r"cannot read the header"),
    # --- DICOM single files
    "dcm-empty": Case(_nii("scan.dcm", b""), CorruptFileError, r"empty"),
    "dcm-garbage": Case(lambda tmp: c.garbage(tmp / "scan.dcm"), CorruptFileError, r"not a DICOM file"),
    "dcm-nifti-named-dcm": Case(
        lambda tmp: c.valid_nifti(tmp / "a.nii").rename(tmp / "scan.dcm") or (tmp / "scan.dcm"),
        CorruptFileError,
        r"not a DICOM file",
    ),
    "dcm-truncated-in-preamble": Case(
        _enhanced_then(lambda p: c.truncate(p, 100)), CorruptFileError, r"not a DICOM"
    ),
    "dcm-truncated-in-header": Case(
        _enhanced_then(lambda p: c.truncate(p, 700)), CorruptFileError, r"truncated"
    ),
    "dcm-truncated-in-pixels": Case(
        _enhanced_then(lambda p: c.truncate(p, c.pixel_data_offset(p) + 100)), CorruptFileError, r"truncated"
    ),
    "dcm-deflated-corrupt": Case(
        _corrupt_deflated, CorruptFileError, r"unreadable DICOM header: Error -3 .*invalid block type"
    ),
    "dcm-deflate-bomb": Case(
        # the header is read without inflating the pixels; decoding stops after the claimed 2 frames
        lambda tmp: c.deflated_dicom_bomb(tmp / "bomb.dcm", 2**30, frames=2),
        ResourceLimitError,
        r"Deflated dataset inflates to more than \d+ bytes",
    ),
    "dcm-bad-value-length": Case(
        _enhanced_then(_bad_meta_length), CorruptFileError, r"unreadable DICOM header: .*bytes per value"
    ),
    "dcm-huge-dims": Case(
        _enhanced_then(lambda p: c.edit_dicom(p, _huge_enhanced)), ResourceLimitError, r"voxels"
    ),
    "dcm-zero-rows": Case(
        _enhanced_then(lambda p: c.edit_dicom(p, lambda ds: setattr(ds, "Rows", 0))),
        CorruptFileError,
        r"Rows=0 is not a valid image size",
    ),
    "dcm-no-pixel-data": Case(_no_pixel_data, NotAnImageError, r"has no pixel data"),
    "dcm-rgb": Case(_rgb_dicom, UnsupportedFormatError, r"colour image"),
    "dcm-single-slice": Case(lambda tmp: c.dicom_series(tmp / "s")[0], UnsupportedFormatError, r"single 2D"),
    "seg": Case(_object("SEG", "seg.dcm"), NotAnImageError, r"Segmentation Storage \(SEG\)"),
    "sr": Case(_object("SR", "report.dcm"), NotAnImageError, r"SR Storage \(SR\)"),
    "rtstruct": Case(_object("RTSTRUCT", "rs.dcm"), NotAnImageError, r"Structure Set .*\(RTSTRUCT\)"),
    "pr": Case(_object("PR", "pr.dcm"), NotAnImageError, r"Presentation State .*\(PR\)"),
    "dicomdir": Case(_object("DICOMDIR", "DICOMDIR"), NotAnImageError, r"\(DICOMDIR\)"),
    # --- DICOM series folders
    "series-only-non-images": Case(
        lambda tmp: (_object("SEG", "d/seg.dcm")(tmp), _object("SR", "d/sr.dcm")(tmp), tmp / "d")[-1],
        NotAnImageError,
        r"no DICOM image series found; 2 file\(s\) not used: .*SEG.*SR",
    ),
    "series-empty-folder": Case(
        lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", NotAnImageError, r"no files"
    ),
    "series-missing-position": Case(
        _series_then(_drop("ImagePositionPatient")), SeriesGeometryError, r"no valid ImagePositionPatient"
    ),
    "series-missing-orientation": Case(
        _series_then(_drop("ImageOrientationPatient")), SeriesGeometryError, r"ImageOrientationPatient"
    ),
    "series-no-geometry-at-all": Case(
        _series_then(
            lambda files: (
                [c.edit_dicom(f, lambda ds: delattr(ds, "ImagePositionPatient")) for f in files] and None
            )
        ),
        # without strict it loads with a no-geometry warning (a CT/MR stack, issue 12)
        SeriesGeometryError,
        r"has no ImagePositionPatient/ImageOrientationPatient in any of its \d+ files",
        {"strict": True},
    ),
    "series-missing-spacing-one": Case(
        _series_then(lambda files: _drop("PixelSpacing")(files) and None), MultipleSeriesError, r"no spacing"
    ),
    "series-missing-spacing-all": Case(
        _series_then(lambda files: _set(None, PixelSpacing=None)(files) or files[0]),
        SeriesGeometryError,
        r"no valid PixelSpacing",
    ),
    "series-zero-spacing": Case(
        _series_then(_set(None, PixelSpacing=[0, 0])),
        SeriesGeometryError,
        r"PixelSpacing must be two positive numbers",
    ),
    "series-negative-spacing": Case(
        _series_then(_set(None, PixelSpacing=[-1, 1])),
        SeriesGeometryError,
        r"PixelSpacing must be two positive numbers",
    ),
    "series-skewed-orientation": Case(
        _series_then(_set(None, ImageOrientationPatient=[1, 0, 0, 0.5, 0.866, 0])),
        SeriesGeometryError,
        r"not perpendicular",
    ),
    "series-zero-orientation": Case(
        _series_then(_set(None, ImageOrientationPatient=[0, 0, 0, 0, 1, 0])),
        SeriesGeometryError,
        r"zero direction vector",
    ),
    "series-all-same-position": Case(
        _series_then(_set(None, ImagePositionPatient=[0, 0, 0])),
        UnsupportedFormatError,
        r"at the same position",
    ),
    "series-mixed-sizes": Case(
        _series_then(_other_size_slice), MultipleSeriesError, r"split into|series found"
    ),
    "series-truncated-pixels": Case(
        _series_then(_truncate_file(3, lambda p: c.pixel_data_offset(p) + 20)),
        CorruptFileError,
        r"truncated",
    ),
    "series-truncated-jpeg2000": Case(_truncated_j2k, CorruptFileError, r"cannot decode pixel data"),
    "series-missing-slices-strict": Case(
        _series_then(lambda files: None, skip_slices=[2, 3]),
        SeriesGeometryError,
        r"missing-slice: 2 slice\(s\) missing",
        {"strict": True},
    ),
    "series-conflicting-duplicate-strict": Case(
        _series_then(
            lambda files: (
                c.edit_dicom(files[-1], lambda ds: setattr(ds, "PixelData", bytes(len(ds.PixelData))))
                and None
            ),
            duplicate_slices=[1],
        ),
        SeriesGeometryError,
        r"conflicting-duplicate",
        {"strict": True},
    ),
    "series-nan-rescale": Case(
        _series_then(lambda files: None, extra_tags={"RescaleSlope": "NaN"}),
        InvalidVoxelsError,
        r"NaN or infinite",
    ),
}


def _run(case: Case, tmp_path: Path) -> tuple[Exception, Path, int]:
    built = case.build(tmp_path)
    target, named = built if isinstance(built, tuple) else (built, built)
    tracemalloc.start()
    try:
        with pytest.raises(Exception) as info:
            load_volume(target, **case.options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return info.value, Path(named), peak


# Known gaps, kept visible: each fails today and must start passing when fixed (strict xfail).
KNOWN_GAPS: dict[str, str] = {}


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[n])) if n in KNOWN_GAPS else n
        for n in sorted(CASES)
    ],
)
def test_bad_input_raises_exact_project_error(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    err, named, peak = _run(case, tmp_path)
    assert type(err) is case.error, f"{name}: expected {case.error.__name__}, got {type(err).__name__}: {err}"
    assert Path(err.path) == named, f"{name}: error names {err.path}, expected {named}"
    assert str(err).startswith(f"{named}: "), str(err)
    assert re.search(case.reason, err.reason), f"{name}: reason {err.reason!r} does not match {case.reason!r}"
    assert peak < PEAK_LIMIT_BYTES, f"{name}: peak traced allocation {peak} bytes"


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({case.error for case in CASES.values()}) >= 7
