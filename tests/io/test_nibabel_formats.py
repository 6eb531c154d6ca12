"""Analyze, NIfTI pairs, MGH/MGZ and MINC1/MINC2 through load_volume, against nibabel's own reading."""

import gzip
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medres3d as mr
from medres3d.errors import CorruptFileError, ResourceLimitError, UnsupportedFormatError

DATA = Path(nib.__file__).parent / "tests" / "data"
# every MINC and MGH file nibabel ships, with nibabel's reading as the reference
REAL_FILES = [*sorted(p.name for p in DATA.glob("*.mnc")), "test.mgz"]


def _reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """nibabel's voxels moved to (C, X, Y, Z) the way medres3d documents, and its affine."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    if isinstance(img, nib.Minc1Image) and data.ndim == 4:  # MINC stores time first
        return data, img.affine
    return (data[None] if data.ndim == 3 else np.moveaxis(data, 3, 0)), img.affine


@pytest.mark.filterwarnings("ignore:Invalid spacing declaration")
@pytest.mark.parametrize("name", REAL_FILES)
def test_nibabel_test_data_loads_with_nibabels_voxels_and_affine(name):
    path = DATA / name
    vol = mr.load_volume(path, dtype="float64")
    voxels, affine = _reference(path)
    np.testing.assert_array_equal(vol.array, voxels)
    np.testing.assert_array_equal(vol.affine, affine)
    expected = {"mgz": "MGH"}.get(path.suffix[1:]) or ("MINC2" if isinstance(nib.load(path), nib.Minc2Image)
                                                        else "MINC1")
    assert vol.meta["format"] == expected and vol.warnings == []


def test_minc_4d_time_axis_becomes_the_channels():
    vol = mr.load_volume(DATA / "minc1_4d.mnc")
    assert vol.shape == (2, 10, 20, 20)
    # the 3D file of the same series is the first frame, on the same grid
    first = mr.load_volume(DATA / "minc1_1_scale.mnc")
    np.testing.assert_array_equal(vol.affine, first.affine)


@pytest.mark.parametrize("name", ["analyze.hdr", "nifti1.hdr", "nifti2.hdr"])
def test_shipped_pair_headers_with_voxels_match_nibabel(tmp_path, name):
    # nibabel ships these headers without their .img; the voxels are written here to the size they claim
    header = tmp_path / name
    shutil.copy(DATA / name, header)
    klass = {"analyze.hdr": nib.AnalyzeHeader, "nifti1.hdr": nib.Nifti1Header, "nifti2.hdr": nib.Nifti2Header}
    with open(header, "rb") as f:
        parsed = klass[name].from_fileobj(f)
    count = int(np.prod(parsed.get_data_shape())) * parsed.get_data_dtype().itemsize
    offset = int(parsed.get_data_offset())
    header.with_suffix(".img").write_bytes(bytes(offset) + np.random.default_rng(0).bytes(count))
    vol = mr.load_volume(header, dtype="float64", nan_policy="keep")
    voxels, affine = _reference(header)
    np.testing.assert_array_equal(vol.array, voxels.astype(np.float64))
    np.testing.assert_array_equal(vol.affine, affine)
    fmt = {"analyze.hdr": "Analyze", "nifti1.hdr": "Nifti1Pair", "nifti2.hdr": "Nifti2Pair"}[name]
    assert vol.meta["format"] == fmt


@pytest.mark.parametrize(
    ("klass", "name"),
    [(nib.AnalyzeImage, "a.img"), (nib.AnalyzeImage, "a.hdr.gz"), (nib.Nifti1Pair, "p.hdr"),
     (nib.Nifti1Pair, "p.img.gz"), (nib.Nifti2Pair, "p2.img"), (nib.MGHImage, "m.mgh")],
)  # fmt: skip
def test_written_pairs_and_mgh_round_trip_voxels_and_affine(tmp_path, klass, name):
    data = np.random.default_rng(1).integers(-500, 500, (6, 5, 4, 3)).astype(np.int16)
    if klass is nib.MGHImage:
        data = data.astype(np.int32)  # MGH stores no int16 image
    affine = np.array([[0, -1.5, 0, 10], [2.0, 0, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    path = tmp_path / name
    nib.save(klass(data, affine), path)
    vol = mr.load_volume(path, dtype="native")
    np.testing.assert_array_equal(vol.array, np.moveaxis(data, 3, 0))
    np.testing.assert_allclose(vol.affine, nib.load(path).affine)
    if klass is nib.AnalyzeImage:
        assert vol.warnings[0].startswith("analyze-orientation:")
    else:
        np.testing.assert_allclose(vol.affine, affine, atol=1e-6)  # NIfTI sform and MGH keep the rotation


def test_a_nifti_pair_goes_through_the_nifti_checks(tmp_path):
    path = tmp_path / "p.hdr"
    nib.save(nib.Nifti1Pair(np.zeros((3, 3, 3), np.int16), np.diag([1, 2, 3, 1.0])), path)
    vol = mr.load_volume(path)
    assert vol.meta["affine_source"] == "sform" and vol.meta["sform_code"] == 2


def _pair(tmp_path: Path, suffix: str = ".img") -> Path:
    path = tmp_path / f"a{suffix}"
    nib.save(nib.AnalyzeImage(np.ones((8, 8, 8), np.int16), np.eye(4)), path)
    return path


def test_truncated_analyze_image_names_the_img_file(tmp_path):
    path = _pair(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"a\.img: truncated: the header needs 1024 bytes"):
        mr.load_volume(tmp_path / "a.hdr")


def test_missing_img_of_a_pair_is_a_corrupt_file_error(tmp_path):
    _pair(tmp_path).unlink()
    with pytest.raises(CorruptFileError, match=r"a\.hdr: the voxel file of this pair, a\.img, is missing"):
        mr.load_volume(tmp_path / "a.hdr")


@pytest.mark.parametrize("name", ["x.mgz", "x.mnc", "x.hdr", "x.img.gz"])
def test_empty_files_are_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(CorruptFileError, match="file is empty"):
        mr.load_volume(tmp_path / name)


def test_garbage_mnc_and_mgz_are_refused_with_the_reason(tmp_path):
    (tmp_path / "x.mnc").write_bytes(b"not a minc file at all" * 10)
    with pytest.raises(CorruptFileError, match=r"neither netCDF \(MINC1\) nor HDF5"):
        mr.load_volume(tmp_path / "x.mnc")
    (tmp_path / "x.mgz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(CorruptFileError, match="not gzip-compressed"):
        mr.load_volume(tmp_path / "x.mgz")


@pytest.mark.parametrize("name", ["minc1_4d.mnc", "minc2_4d.mnc", "test.mgz"])
def test_truncated_real_files_are_corrupt_file_errors(tmp_path, name):
    raw = (DATA / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(CorruptFileError):
        mr.load_volume(path)


def test_mgh_header_claiming_a_huge_image_is_refused_before_reading(tmp_path):
    raw = bytearray(gzip.decompress((DATA / "test.mgz").read_bytes()))
    raw[4:20] = struct.pack(">4i", 4000, 4000, 4000, 1)  # width, height, depth, frames
    path = tmp_path / "huge.mgh"
    path.write_bytes(bytes(raw))
    with pytest.raises(ResourceLimitError, match="4000x4000x4000"):
        mr.load_volume(path)
    with pytest.raises(CorruptFileError, match="truncated: the header needs"):
        mr.load_volume(path, max_voxels=None, max_bytes=None)  # checked against the file size, not read


def test_minc1_header_is_checked_before_nibabel_reads_the_file(monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("nibabel read the file before the voxel limit was checked")

    monkeypatch.setattr(nib, "load", must_not_load)
    with pytest.raises(ResourceLimitError, match="2x10x20x20 = 8000 voxels"):
        mr.load_volume(DATA / "minc1_4d.mnc", max_voxels=500)


def test_2d_analyze_is_unsupported(tmp_path):
    path = tmp_path / "flat.img"
    nib.save(nib.AnalyzeImage(np.zeros((5, 6), np.int16), np.eye(4)), path)
    with pytest.raises(UnsupportedFormatError, match="2D image"):
        mr.load_volume(path)
