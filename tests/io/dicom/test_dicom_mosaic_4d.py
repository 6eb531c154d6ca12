"""Siemens mosaics and 4D series (diffusion, multi-echo, magnitude/phase), against nibabel and dcm2niix.

Real files: nibabel's Siemens diffusion mosaics (b0 and b1000, 48 slices of 128x128). Synthetic:
:mod:`medres3d.synthetic.dicom_4d`. dcm2niix is the independent reference (tests/io/dicom/
dcm2niix_reference.py); its row flip is undone from the affines, so voxels compare one to one.
"""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from dcm2niix_reference import assert_diffusion_matches, matched_voxels, run_dcm2niix

from medres3d.errors import CorruptFileError, SeriesGeometryError, UnsupportedFormatError
from medres3d.io import load_volume
from medres3d.io.dicom import find_dicom_series, load_dicom_series
from medres3d.io.dicom.header import read_header
from medres3d.synthetic import make_affine
from medres3d.synthetic.dicom_4d import write_multivolume_series, write_siemens_mosaic

NICOM_DATA = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"


def _nibabel_wrapper(path: Path):
    from nibabel.nicom.dicomwrappers import wrapper_from_data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return wrapper_from_data(pydicom.dcmread(path))


@pytest.fixture(scope="module")
def siemens_dwi(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("siemens_dwi")
    for name in ("siemens_dwi_0", "siemens_dwi_1000"):
        with gzip.open(NICOM_DATA / f"{name}.dcm.gz") as src, open(folder / f"{name}.dcm", "wb") as dst:
            shutil.copyfileobj(src, dst)
    return folder


def _phantom(shape=(24, 20, 10), n=4, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 1000, shape).astype(np.float64) for _ in range(n)]


DIRECTIONS = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]


# -- real Siemens mosaics (nibabel's test data) ---------------------------------------------------


def test_real_mosaic_scan_names_each_volume_by_b_value(siemens_dwi):
    series = find_dicom_series(siemens_dwi)
    assert [s.part for s in series] == ["b0", "b1000 dir1"]
    # each a volume of 48 slices of 128x128 (the tiles), not one image of the whole mosaic: batch's
    # num_slices and --min-slices, and the 4D voxel bound, count from these
    volume = series[1].load()
    assert [(s.num_frames, s.rows, s.columns) for s in series] == [(48, 128, 128)] * 2
    assert volume.spatial_shape == (128, 128, 48)
    header = read_header(siemens_dwi / "siemens_dwi_1000.dcm")
    assert header.is_mosaic and header.mosaic_images == 48 and header.b_value == 1000
    # the fast parser and pydicom read the private tags alike
    assert read_header(siemens_dwi / "siemens_dwi_1000.dcm", fast=False) == header


def test_real_mosaic_equals_nibabel_wrapper(siemens_dwi):
    for series in find_dicom_series(siemens_dwi):
        volume = series.load()
        wrapper = _nibabel_wrapper(series.files[0])
        assert volume.shape == (1, 128, 128, 48)
        # nibabel: (rows, columns, slices) in LPS; medres3d: (columns, rows, slices) in RAS
        np.testing.assert_array_equal(volume.array[0], wrapper.get_data().transpose(1, 0, 2))
        expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ wrapper.affine[:, [1, 0, 2, 3]]
        np.testing.assert_allclose(volume.affine, expected, atol=1e-9)


def test_real_mosaic_4d_equals_dcm2niix(siemens_dwi, tmp_path):
    volume = load_dicom_series(siemens_dwi, as_4d=True)
    assert volume.shape == (2, 128, 128, 48) and volume.warnings == []
    assert_diffusion_matches(volume, siemens_dwi, tmp_path)  # no rescale here: voxels equal
    assert volume.meta["echo_times"] == [93.0, 93.0] and volume.meta["repetition_time"] == 6600.0


def test_load_volume_as_4d(siemens_dwi):
    assert load_volume(siemens_dwi, as_4d=True).shape == (2, 128, 128, 48)


# -- synthetic mosaics -------------------------------------------------------------------------


@pytest.mark.parametrize("plane", ["axial", "oblique", "sagittal"])
def test_synthetic_mosaic_geometry_against_truth_nibabel_and_dcm2niix(tmp_path, plane):
    affine = make_affine((2.0, 2.5, 3.0), plane)
    volumes = _phantom()
    files = write_siemens_mosaic(volumes, affine, tmp_path / "in", b_values=[0, 1000, 1000, 1000],
                                 gradients=DIRECTIONS)  # fmt: skip
    series = find_dicom_series(tmp_path / "in")
    assert [s.part for s in series] == ["b0", "b1000 dir1", "b1000 dir2", "b1000 dir3"]
    volume = load_dicom_series(tmp_path / "in", as_4d=True)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(volume.array, np.stack(volumes))
    wrapper = _nibabel_wrapper(files[2])
    np.testing.assert_array_equal(wrapper.get_data().transpose(1, 0, 2), volumes[2])
    assert_diffusion_matches(volume, tmp_path / "in", tmp_path / "out")
    np.testing.assert_allclose(volume.meta["b_vectors_lps"], DIRECTIONS, atol=1e-6)


def test_fmri_mosaics_are_time_points(tmp_path):
    write_siemens_mosaic(_phantom(n=3), make_affine((3, 3, 3)), tmp_path)
    assert [s.part for s in find_dicom_series(tmp_path)] == ["t1", "t2", "t3"]
    assert load_dicom_series(tmp_path, as_4d=True).meta["num_volumes"] == 3


def test_mosaic_claiming_more_images_than_its_tiles_is_refused(tmp_path):
    [path] = write_siemens_mosaic(_phantom(n=1), make_affine(), tmp_path, claimed_images=10_000)
    with pytest.raises(CorruptFileError, match="claims 10000 images") as err:
        load_dicom_series(tmp_path)
    assert err.value.path == str(path)


def test_mosaic_without_csa_uses_the_private_count(tmp_path):
    volumes = _phantom(n=1)
    write_siemens_mosaic(volumes, make_affine((2, 2, 3)), tmp_path, csa=False)
    volume = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(volume.array[0], volumes[0])
    np.testing.assert_allclose(volume.affine, make_affine((2, 2, 3)), atol=1e-5)
    assert any(w.startswith("mosaic-no-slice-normal") for w in volume.warnings)


def test_mosaic_with_truncated_csa_or_no_count_is_the_projects_error(tmp_path):
    [path] = write_siemens_mosaic(_phantom(n=1), make_affine(), tmp_path)
    ds = pydicom.dcmread(path)
    ds[0x00291010].value = ds[0x00291010].value[:40]  # cut inside the first tag
    del ds[0x0019100A]
    ds.save_as(path)
    with pytest.raises(CorruptFileError, match="mosaic") as err:
        load_dicom_series(tmp_path)
    assert err.value.path == str(path)


# -- synthetic single-frame 4D series ----------------------------------------------------------


def test_diffusion_series_splits_by_b_value_and_direction(tmp_path):
    affine = make_affine((2.0, 2.0, 3.0), "oblique")
    volumes = _phantom()
    write_multivolume_series(volumes, affine, tmp_path / "in", b_values=[0, 1000, 1000, 1000],
                             gradients=DIRECTIONS)  # fmt: skip
    series = find_dicom_series(tmp_path / "in")
    assert [s.part for s in series] == ["b0", "b1000 dir1", "b1000 dir2", "b1000 dir3"]
    assert all(s.num_files == 10 for s in series)
    volume = load_dicom_series(tmp_path / "in", as_4d=True)
    assert volume.warnings == []
    np.testing.assert_allclose(volume.array, np.stack(volumes), atol=0.5)
    assert_diffusion_matches(volume, tmp_path / "in", tmp_path / "out", atol=0.5)
    # one volume alone, by its key
    one = load_dicom_series(tmp_path / "in", series_uid=series[2].key)
    np.testing.assert_allclose(one.array[0], volumes[2], atol=0.5)


def test_multi_echo_series_against_dcm2niix(tmp_path):
    volumes = _phantom(n=3)
    write_multivolume_series(volumes, make_affine((1.5, 1.5, 2.0)), tmp_path / "in", echo_times=[5, 10, 15])
    assert [s.part for s in find_dicom_series(tmp_path / "in")] == ["echo 1", "echo 2", "echo 3"]
    volume = load_dicom_series(tmp_path / "in", as_4d=True)
    assert volume.meta["echo_times"] == [5.0, 10.0, 15.0]
    converted = run_dcm2niix(tmp_path / "in", tmp_path / "out")  # one file per echo: _e1, _e2, _e3
    assert len(converted) == 3
    for n, echo in enumerate(converted):
        np.testing.assert_allclose(matched_voxels(volume, echo)[0], volume.array[n], atol=0.5)


def test_magnitude_and_phase_are_two_volumes(tmp_path):
    magnitude, phase = _phantom(n=2)
    phase -= 500  # signed, as phase images are
    write_multivolume_series([magnitude, phase], make_affine(), tmp_path / "in", image_kinds=["M", "P"])
    assert [s.part for s in find_dicom_series(tmp_path / "in")] == ["magnitude", "phase"]
    volume = load_dicom_series(tmp_path / "in", as_4d=True)
    assert [v["image_kind"] for v in volume.meta["volumes"]] == ["M", "P"]
    np.testing.assert_allclose(volume.array[1], phase, atol=0.5)
    converted = run_dcm2niix(tmp_path / "in", tmp_path / "out")  # the phase goes to its own _ph file
    assert len(converted) == 2
    for n, image in enumerate(converted):
        assert np.corrcoef(matched_voxels(volume, image)[0].ravel(), volume.array[n].ravel())[0, 1] > 0.999999


def test_4d_volume_missing_an_end_slice_is_the_projects_error(tmp_path):
    volumes = _phantom(n=3)
    files = write_multivolume_series(volumes, make_affine(), tmp_path, b_values=[0, 1000, 1000],
                                     gradients=DIRECTIONS[:3])  # fmt: skip
    files[-1].unlink()  # the last slice of the last volume
    with pytest.raises(SeriesGeometryError, match="not on the grid"):
        load_dicom_series(tmp_path, as_4d=True)
    # each complete volume still loads alone
    assert find_dicom_series(tmp_path)[0].load().shape == (1, 24, 20, 10)


def test_a_file_with_a_conflicting_b_value_is_named(tmp_path):
    files = write_multivolume_series(_phantom(n=2), make_affine(), tmp_path, b_values=[0, 1000],
                                     gradients=DIRECTIONS[:2])  # fmt: skip
    ds = pydicom.dcmread(files[13])
    ds.DiffusionBValue = 500.0
    ds.save_as(files[13])
    with pytest.raises(UnsupportedFormatError) as err:
        load_dicom_series(tmp_path, as_4d=True)
    assert err.value.path == str(files[13])


def test_without_as_4d_several_volumes_are_listed_not_collapsed(tmp_path):
    write_multivolume_series(_phantom(n=2), make_affine(), tmp_path, b_values=[0, 1000],
                             gradients=DIRECTIONS[:2])  # fmt: skip
    from medres3d.errors import MultipleSeriesError

    with pytest.raises(MultipleSeriesError, match="b1000 dir1"):
        load_dicom_series(tmp_path)


def test_as_4d_passes_philips_scaling_and_resample_to_every_volume(tmp_path):
    affine = make_affine((2.0, 2.0, 3.0), "oblique")
    volumes = _phantom(n=2)
    files = write_multivolume_series(volumes, affine, tmp_path, b_values=[0, 1000], gradients=DIRECTIONS[:2])
    normal_lps = affine[:3, 2] * np.array([-1.0, -1.0, 1.0])  # 3 mm along the slice normal
    block_tag = "Philips MR Imaging DD 001"
    for f in files:
        ds = pydicom.dcmread(f)
        ds.private_block(0x2005, block_tag, create=True).add_new(0x0E, "FL", 0.5)
        if f.name.endswith("_0004.dcm"):  # slice 4 of each volume 1.2 mm off the even grid
            moved = np.asarray(ds.ImagePositionPatient, dtype=float) + 0.4 * normal_lps
            ds.ImagePositionPatient = [float(v) for v in moved]
        ds.save_as(f)
    display = load_volume(tmp_path, as_4d=True)
    assert any("uneven-spacing" in w for w in display.warnings)
    precise = load_volume(tmp_path, as_4d=True, philips_scaling="precise", resample="even")
    assert precise.meta["philips_scaling"] == "precise"
    assert sum("resampled-even" in w for w in precise.warnings) == 2  # one per volume
    one = load_dicom_series(tmp_path, series_uid=find_dicom_series(tmp_path)[1].key, resample="even")
    np.testing.assert_allclose(precise.array[1], one.array[0] / 0.5, rtol=1e-6)
    np.testing.assert_allclose(precise.affine, one.affine, atol=1e-9)


def test_as_4d_decodes_each_volume_into_its_place(tmp_path):
    volumes = _phantom(n=3)
    write_multivolume_series(volumes, make_affine((2.0, 2.0, 3.0), "oblique"), tmp_path,
                             b_values=[0, 1000, 1000], gradients=DIRECTIONS[:3])  # fmt: skip
    vol = load_dicom_series(tmp_path, as_4d=True)
    # one slice-major (C, k, rows, cols) buffer seen as (C, i, j, k): no volume was copied into place
    assert vol.array.transpose(0, 3, 2, 1).flags.c_contiguous
    for n, part in enumerate(find_dicom_series(tmp_path)):
        np.testing.assert_array_equal(vol.array[n], part.load().array[0])
    np.testing.assert_allclose(vol.array, np.stack(volumes), atol=0.5)


def test_as_4d_native_dtype_widens_when_volumes_differ(tmp_path):
    magnitude, phase = _phantom(n=2)
    phase -= 500  # signed: int16 where the magnitude is uint16
    files = write_multivolume_series([magnitude, phase], make_affine(), tmp_path, image_kinds=["M", "P"])
    for f in files[:10]:  # the magnitude unsigned (its values are positive: the same bytes)
        ds = pydicom.dcmread(f)
        ds.PixelRepresentation = 0
        ds.save_as(f)
    vol = load_dicom_series(tmp_path, as_4d=True, dtype="native")
    assert vol.array.dtype == np.int32  # holds both uint16 and int16
    np.testing.assert_array_equal(vol.array, np.rint(np.stack([magnitude, phase])))


def test_nibabels_other_mosaics_load_as_dcm2niix_cuts_them(tmp_path):
    """0.dcm and 1.dcm: 48 tiles of 36x36 in a 256x256 mosaic (the last 4 rows and columns unused).

    These are trimmed test files (AcquisitionMatrix says 128x128 tiles, which a real 7x7 mosaic
    would hold in 896x896): nibabel gives their shape (36, 36, 48) but cannot cut them (its
    get_data fails); dcm2niix converts them to the same grid and affine, which is checked, but
    cuts their leftover pixels differently, so the voxels are checked against tiles cut by hand
    from pydicom's pixel array. A mosaic file passed alone is a whole volume, not "a single 2D
    slice".
    """
    from medres3d import load_volume

    data = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"
    for name in ("0.dcm", "1.dcm"):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        path = shutil.copy(data / name, folder / name)
        volume = load_volume(path)
        assert volume.spatial_shape == (36, 36, 48)
        (converted,) = run_dcm2niix(folder, tmp_path / f"out_{name}")
        assert converted.data.shape[:3] == (36, 36, 48)
        matched_voxels(volume, converted)  # checks the two affines within 1e-3 mm
        ds = pydicom.dcmread(path)
        mosaic = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) + float(
            getattr(ds, "RescaleIntercept", 0))
        tiles = [mosaic[36 * (k // 7): 36 * (k // 7 + 1), 36 * (k % 7): 36 * (k % 7 + 1)] for k in range(48)]
        expected = np.stack([tile.T for tile in tiles], axis=-1)  # array[i, j, k] = pixel[j, i] of tile k
        np.testing.assert_array_equal(volume.array[0], expected)
