"""DICOM series -> Volume against SimpleITK, nibabel and the written files' own positions."""

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_helpers import assert_same_world, sitk_series
from pydicom.pixels import apply_modality_lut

from medres3d.errors import CorruptFileError, ResourceLimitError, SeriesGeometryError, UnsupportedFormatError
from medres3d.io.dicom import find_dicom_series, load_dicom_series
from medres3d.synthetic import make_affine, write_dicom_series, write_nifti

SHAPE = (6, 5, 7)
LPS = np.diag([-1.0, -1.0, 1.0])


def _volume(seed=0, low=-1000, high=1500, shape=SHAPE):
    return np.random.default_rng(seed).integers(low, high, size=shape).astype(np.float32)


def _file_positions_ras(files):
    """ImagePositionPatient of each file, in RAS, sorted along the series' stacking direction."""
    return [
        LPS @ np.asarray(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, float)
        for f in files
    ]


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal", "oblique"])
@pytest.mark.parametrize("flip", [(False, False, False), (True, False, True)], ids=["plain", "flipped"])
def test_voxels_and_world_match_simpleitk_and_nibabel(tmp_path, orientation, flip):
    array = _volume()
    affine = make_affine((0.7, 0.9, 2.5), orientation, flip=flip, origin=(10, -20, 30))
    write_dicom_series(array, affine, tmp_path / "dcm", shuffle_names=True, shuffle_instance_numbers=True)
    nifti = write_nifti(array, affine, tmp_path / "ref.nii.gz")

    vol = load_dicom_series(tmp_path / "dcm")

    assert vol.warnings == [] and vol.modality == "CT" and vol.array.dtype == np.float32
    sitk_array, sitk_affine = sitk_series(tmp_path / "dcm")
    np.testing.assert_array_equal(vol.array[0], sitk_array)  # same voxel order as SimpleITK
    np.testing.assert_allclose(vol.affine, sitk_affine, atol=1e-4)
    ref = nib.load(nifti)
    assert_same_world(vol.array[0], vol.affine, np.asarray(ref.dataobj), ref.affine)


def test_missing_slice_is_filled_and_reported_and_real_slices_keep_their_positions(tmp_path):
    array = _volume(1)
    affine = make_affine((1.0, 1.0, 2.0), "axial")
    files = write_dicom_series(array, affine, tmp_path, skip_slices=[3])

    vol = load_dicom_series(tmp_path)

    assert vol.shape == (1, *SHAPE) and vol.meta["missing_slices"] == [3]
    assert [w.split(":")[0] for w in vol.warnings] == ["missing-slice"]
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    kept = [k for k in range(SHAPE[2]) if k != 3]
    np.testing.assert_array_equal(vol.array[0][..., kept], array[..., kept])
    assert np.all(vol.array[0, :, :, 3] == array[..., kept].min())
    for k, position in zip(kept, _file_positions_ras(files), strict=True):
        np.testing.assert_allclose(vol.affine @ [0, 0, k, 1], [*position, 1], atol=1e-5)
    with pytest.raises(SeriesGeometryError, match="missing-slice"):
        load_dicom_series(tmp_path, strict=True)


def test_identical_duplicate_is_dropped_with_a_warning(tmp_path):
    array = _volume(2)
    write_dicom_series(array, make_affine((1, 1, 2)), tmp_path, duplicate_slices=[2, 5])
    vol = load_dicom_series(tmp_path, strict=True)  # identical copies are not an error even when strict
    np.testing.assert_array_equal(vol.array[0], array)
    assert len(vol.warnings) == 1 and vol.warnings[0].startswith("duplicate-slice: 2 file(s)")


def test_conflicting_duplicate_keeps_the_first_file_by_name_or_raises_when_strict(tmp_path):
    array = _volume(3)
    files = write_dicom_series(
        array, make_affine((1, 1, 2)), tmp_path, duplicate_slices=[4], shuffle_names=False
    )
    duplicate = pydicom.dcmread(files[-1])
    pixels = duplicate.pixel_array.copy()
    pixels[0, 0] += 7
    duplicate.PixelData = pixels.tobytes()
    duplicate.save_as(files[-1])

    vol = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.array[0], array)  # "0004.dcm" sorts before "0004_duplicate.dcm"
    assert (
        vol.warnings[0].startswith("conflicting-duplicate: 1 file(s)")
        and "0004_duplicate.dcm" in vol.warnings[0]
    )
    with pytest.raises(SeriesGeometryError, match="conflicting-duplicate"):
        load_dicom_series(tmp_path, strict=True)


def test_tilted_series_has_the_true_sheared_affine(tmp_path):
    array = _volume(4)
    affine = make_affine((0.8, 0.8, 2.0), "axial", tilt_deg=12.0, origin=(5, 6, 7))
    files = write_dicom_series(array, affine, tmp_path, shuffle_names=False)

    vol = load_dicom_series(tmp_path)

    np.testing.assert_array_equal(vol.array[0], array)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    # Independent of the writer's affine: each file's own ImagePositionPatient is voxel (0, 0, k).
    for k, position in enumerate(_file_positions_ras(files)):
        np.testing.assert_allclose(vol.affine @ [0, 0, k, 1], [*position, 1], atol=1e-5)
    assert [w.split(":")[0] for w in vol.warnings] == ["gantry-tilt"] and "12.00 degrees" in vol.warnings[0]
    # SimpleITK assumes no shear: its voxels match, its slice origins (beyond the first) do not.
    sitk_array, sitk_affine = sitk_series(tmp_path)
    np.testing.assert_array_equal(sitk_array, vol.array[0])
    assert not np.allclose(
        sitk_affine @ [0, 0, SHAPE[2] - 1, 1], vol.affine @ [0, 0, SHAPE[2] - 1, 1], atol=0.5
    )


def test_uneven_spacing_is_reported_or_raises_when_strict(tmp_path):
    files = write_dicom_series(_volume(5), make_affine((1, 1, 2)), tmp_path, shuffle_names=False)
    ds = pydicom.dcmread(files[3])
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [
        float(ds.ImagePositionPatient[2]) + 0.6
    ]
    ds.save_as(files[3])
    vol = load_dicom_series(tmp_path)
    assert [w.split(":")[0] for w in vol.warnings] == ["uneven-spacing"] and files[3].name in vol.warnings[0]
    np.testing.assert_allclose(vol.spacing, (1, 1, 2))
    with pytest.raises(SeriesGeometryError, match="uneven-spacing"):
        load_dicom_series(tmp_path, strict=True)


def test_rescale_slope_and_native_dtype(tmp_path):
    array = _volume(6)
    write_dicom_series(array, make_affine(), tmp_path / "ct")
    native = load_dicom_series(tmp_path / "ct", dtype="native")
    assert native.array.dtype == np.int16 and native.meta["rescale"] == {"slope": 1.0, "intercept": -1024.0}
    np.testing.assert_array_equal(native.array[0], array)

    write_dicom_series(array, make_affine(), tmp_path / "half", rescale_slope=0.5, rescale_intercept=-1024)
    vol = load_dicom_series(tmp_path / "half", dtype="float64")
    assert vol.array.dtype == np.float64
    np.testing.assert_allclose(vol.array[0], array, atol=0.25)
    as_native = load_dicom_series(tmp_path / "half", dtype="native")
    assert as_native.array.dtype == np.float32 and as_native.warnings[0].startswith("native-dtype:")


def test_rescale_is_applied_per_slice_as_pydicom_applies_it(tmp_path):
    files = write_dicom_series(_volume(11, 0, 3000), make_affine(), tmp_path, rescale_intercept=0.0)
    for n, path in enumerate(files):  # a different integer intercept on every other file
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = "1", str(-1024 * (n % 2))
        ds.save_as(path)
    # reference: pydicom's modality LUT of each file, placed by the file's own slice position
    by_depth = {}
    for path in files:
        ds = pydicom.dcmread(path)
        by_depth[float(ds.ImagePositionPatient[2])] = apply_modality_lut(ds.pixel_array, ds).T
    for dtype in ("float32", "native"):
        vol = load_dicom_series(tmp_path, dtype=dtype)
        depths = [float((vol.affine @ [0, 0, k, 1])[2]) for k in range(vol.shape[3])]  # RAS z = LPS z
        expected = np.stack([by_depth[min(by_depth, key=lambda z: abs(z - d))] for d in depths], axis=-1)
        assert sorted(by_depth) == pytest.approx(sorted(depths))
        assert vol.meta["rescale"]["per_slice"]
        assert vol.array.dtype == (np.int16 if dtype == "native" else np.float32)
        np.testing.assert_array_equal(vol.array[0], expected)


def test_zero_rescale_slope_is_a_corrupt_file_not_a_constant_volume(tmp_path):
    files = write_dicom_series(_volume(14), make_affine(), tmp_path)
    ds = pydicom.dcmread(files[2])
    ds.RescaleSlope = "0"  # every voxel would be RescaleIntercept
    ds.save_as(files[2])
    with pytest.raises(CorruptFileError, match=f"{files[2].name}.*RescaleSlope=0"):
        load_dicom_series(tmp_path)


def test_mr_unsigned_and_signed_pixels(tmp_path):
    mr = _volume(7, 0, 4000)
    write_dicom_series(mr, make_affine(), tmp_path / "mr", modality="MR")
    vol = load_dicom_series(tmp_path / "mr", dtype="native")
    assert vol.modality == "MR" and vol.array.dtype == np.uint16
    np.testing.assert_array_equal(vol.array[0], mr)

    ct = _volume(8)
    write_dicom_series(ct, make_affine(), tmp_path / "signed", rescale_intercept=0.0, pixel_representation=1)
    np.testing.assert_array_equal(load_dicom_series(tmp_path / "signed").array[0], ct)


def test_native_dtype_holds_every_file_when_pixel_representation_differs(tmp_path):
    mr = _volume(12, 0, 4000)
    mr[..., 3:] += 30000  # above int16: these files must stay unsigned
    files = write_dicom_series(mr, make_affine(), tmp_path, modality="MR", shuffle_names=False)
    for path in sorted(files)[:3]:  # the first files by name (the loader's template) are signed
        ds = pydicom.dcmread(path)
        assert int(ds.pixel_array.max()) < 2**15
        ds.PixelRepresentation = 1
        ds.save_as(path)
    native = load_dicom_series(tmp_path, dtype="native")
    np.testing.assert_array_equal(native.array[0], mr)
    np.testing.assert_array_equal(native.array, load_dicom_series(tmp_path).array)


def test_unused_high_bits_are_masked_like_pydicom(tmp_path):
    array = _volume(9, -2000, 2000)
    files = write_dicom_series(
        array, make_affine(), tmp_path, rescale_intercept=0.0, pixel_representation=1, bits_stored=12
    )
    for path in files:  # garbage in the 4 unused bits, as some scanners write
        ds = pydicom.dcmread(path)
        raw = np.frombuffer(ds.PixelData, "<u2") & 0x0FFF | 0x5000
        ds.PixelData = raw.astype("<u2").tobytes()
        ds.save_as(path)
    vol = load_dicom_series(tmp_path, dtype="native")
    reference = np.stack([pydicom.dcmread(f).pixel_array.T for f in files], axis=-1)
    np.testing.assert_array_equal(vol.array[0], reference)
    np.testing.assert_array_equal(vol.array[0], array)


@pytest.mark.parametrize("dtype", ["float32", "native"])
@pytest.mark.parametrize("pixel_representation", [0, 1])
def test_zero_bits_stored_is_a_corrupt_file_not_a_blank_volume(tmp_path, dtype, pixel_representation):
    files = write_dicom_series(
        _volume(13, 0, 1000), make_affine(), tmp_path, rescale_intercept=0.0,
        pixel_representation=pixel_representation,
    )
    ds = pydicom.dcmread(files[0])
    ds.BitsStored = 0  # masking to 0 bits would silently zero every pixel
    ds.save_as(files[0])
    with pytest.raises(CorruptFileError, match=f"{files[0].name}.*BitsStored=0"):
        load_dicom_series(tmp_path, dtype=dtype)


def test_monochrome1_is_kept_with_a_warning(tmp_path):
    array = _volume(10, 0, 1000)
    write_dicom_series(
        array, make_affine(), tmp_path, extra_tags={"PhotometricInterpretation": "MONOCHROME1"}
    )
    vol = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.array[0], array)
    assert [w.split(":")[0] for w in vol.warnings] == ["monochrome1"]


def test_voxel_limit_is_checked_before_any_pixel_is_read(tmp_path):
    files = write_dicom_series(_volume(11), make_affine(), tmp_path)
    with open(files[0], "r+b") as fp:  # a broken file would raise CorruptFileError if it were decoded
        fp.truncate(fp.seek(0, 2) - 20)
    with pytest.raises(ResourceLimitError, match="6x5x7"):
        load_dicom_series(tmp_path, max_voxels=100)
    with pytest.raises(CorruptFileError, match="truncated") as info:
        load_dicom_series(tmp_path)
    assert info.value.path == str(files[0])


def test_missing_position_names_the_file(tmp_path):
    files = write_dicom_series(_volume(12), make_affine(), tmp_path)
    ds = pydicom.dcmread(files[2])
    del ds.ImagePositionPatient
    ds.save_as(files[2])
    with pytest.raises(SeriesGeometryError, match="ImagePositionPatient") as info:
        load_dicom_series(tmp_path)
    assert info.value.path == str(files[2])


def test_single_slice_series_is_a_2d_error(tmp_path):
    write_dicom_series(_volume(13, shape=(6, 5, 1)), make_affine(), tmp_path)
    with pytest.raises(UnsupportedFormatError, match="single 2D slice"):
        load_dicom_series(tmp_path)


def test_list_of_files_and_any_number_of_workers_give_the_same_volume(tmp_path):
    array = _volume(14)
    files = write_dicom_series(array, make_affine((1, 1, 3), "sagittal"), tmp_path)
    from_files = load_dicom_series([str(f) for f in reversed(files)])
    np.testing.assert_array_equal(from_files.array[0], array)
    series = find_dicom_series(tmp_path)[0]
    for workers in (1, 3):
        vol = series.load(workers=workers)
        np.testing.assert_array_equal(vol.array[0], array)
        np.testing.assert_allclose(vol.affine, from_files.affine)


def test_absurd_image_size_is_a_corrupt_header(tmp_path):
    files = write_dicom_series(_volume(15), make_affine(), tmp_path)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.Rows = 0
        ds.save_as(path)
    with pytest.raises(CorruptFileError, match=r"Rows=0 is not a valid image size \(1\.\.65535\)"):
        load_dicom_series(tmp_path)
