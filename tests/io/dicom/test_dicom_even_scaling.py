"""resample="even", Philips precise scaling, RT Dose scaling, header-only files and files without geometry."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medres3d as mr
from medres3d.errors import NotAnImageError, SeriesGeometryError
from medres3d.io.dicom import load_dicom_file, load_dicom_series
from medres3d.io.dicom.header import read_header
from medres3d.synthetic import make_affine, write_dicom_series

SHAPE = (24, 20)


def _linear(world: np.ndarray) -> np.ndarray:
    """A phantom that linear interpolation reproduces exactly: a linear function of RAS world position."""
    return 2.0 * world[0] + 3.0 * world[1] + 5.0 * world[2] + 100.0


def _slice_values(affine: np.ndarray, k: float) -> np.ndarray:
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    idx = np.stack([i, j, np.full_like(i, k, dtype=float), np.ones_like(i, dtype=float)]).reshape(4, -1)
    return _linear(affine @ idx).reshape(SHAPE)


def _write_slices(folder: Path, affine: np.ndarray, depths: list[float]) -> None:
    """One file per slice at grid depth ``k`` (fractional k: uneven positions), values linear in world."""
    uids = {"series_uid": pydicom.uid.generate_uid(), "study_uid": pydicom.uid.generate_uid(),
            "frame_of_reference_uid": pydicom.uid.generate_uid()}  # fmt: skip
    for n, k in enumerate(depths):
        origin = affine @ [0, 0, k, 1]
        shifted = affine.copy()
        shifted[:3, 3] = origin[:3]
        values = _slice_values(affine, k)[..., None]
        write_dicom_series(values, shifted, folder, file_prefix=f"s{n:03d}_", shuffle_names=False, **uids)
    _as_one_acquisition(folder)


def _as_one_acquisition(folder: Path) -> None:
    """One StudyDate/StudyTime for all the files (one call of the writer per slice), and fixed
    SOPInstanceUIDs in file-name order.

    dcm2niix takes a changed StudyTime for another study (checked: it then writes two series):
    when writing the slices crossed a second, the comparisons below failed now and then (an even
    grid of 11 slices instead of 17, and two _Eq_1 files, both seen in CI runs). Its tilt-corrected
    voxels also depend on its order of files of one InstanceNumber (off by 14-23 from its own affine
    in some orders), which fixed UIDs keep the same in every run.
    """
    for n, path in enumerate(sorted(folder.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{n + 1}"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.save_as(path)


def _check_linear(vol, fill_margin: int = 2) -> None:
    data = vol.array[0]
    i, j, k = np.meshgrid(*(np.arange(n) for n in data.shape), indexing="ij")
    world = vol.affine @ np.stack([i, j, k, np.ones_like(i)]).reshape(4, -1)
    expected = _linear(world).reshape(data.shape)
    inner = data[fill_margin:-fill_margin, fill_margin:-fill_margin]
    covered = inner != float(data.min())  # pixels shifted out of the source slices hold the fill value
    assert covered.mean() > 0.7
    diff = np.abs(inner - expected[fill_margin:-fill_margin, fill_margin:-fill_margin])[covered]
    assert diff.max() <= 0.51  # the stored values are rounded to integers


def test_uneven_spacing_resampled_even_reproduces_a_linear_phantom(tmp_path):
    affine = make_affine((0.8, 0.9, 2.0))
    depths = [0.0, 1.0, 2.0, 3.4, 4.0, 5.0, 6.0, 7.3, 8.0]
    _write_slices(tmp_path, affine, depths)
    plain = load_dicom_series(tmp_path)
    assert any(w.startswith("uneven-spacing:") for w in plain.warnings)
    with pytest.raises(SeriesGeometryError, match="uneven-spacing"):
        load_dicom_series(tmp_path, strict=True)

    vol = mr.load_volume(tmp_path, resample="even", strict=True)  # corrected, so not an error
    assert vol.shape == (1, *SHAPE, 9)
    np.testing.assert_allclose(vol.affine[:3, :3], np.diag([0.8, 0.9, 2.0]), atol=1e-9)
    np.testing.assert_allclose(vol.affine[:3, 3], affine[:3, 3], atol=1e-9)
    notes = [w for w in vol.warnings if w.startswith("resampled-even:")]
    assert len(notes) == 1 and "9 slices resampled onto an even orthogonal grid of 9 slices" in notes[0]
    assert vol.meta["resampled"]["slice_spacing"] == pytest.approx(2.0)
    _check_linear(vol)
    # slices already on the even grid are copied, not interpolated
    np.testing.assert_array_equal(vol.array[0, ..., 0], plain.array[0, ..., 0])


def test_gantry_tilt_resampled_even_gives_an_orthogonal_grid(tmp_path):
    affine = make_affine((0.7, 0.7, 2.5), tilt_deg=20.0)
    _write_slices(tmp_path, affine, [float(k) for k in range(10)])
    plain = load_dicom_series(tmp_path)
    assert any(w.startswith("gantry-tilt:") for w in plain.warnings)
    vol = load_dicom_series(tmp_path, resample="even")
    columns = vol.affine[:3, :3]
    gram = columns.T @ columns
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-9)  # orthogonal axes
    np.testing.assert_allclose(vol.affine[:3, :2], plain.affine[:3, :2], atol=1e-9)  # in-plane kept
    assert vol.meta["resampled"]["tilt_degrees"] == pytest.approx(20.0, abs=0.01)
    _check_linear(vol)


def test_resample_is_validated(tmp_path):
    with pytest.raises(mr.errors.ConfigError, match="resample"):
        load_dicom_series(get_testdata_file("CT_small.dcm"), resample="evenly")


def _philips(path: Path, scale_slope: float) -> None:
    ds = pydicom.dcmread(path)
    block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
    block.add_new(0x0E, "FL", scale_slope)
    ds.save_as(path, enforce_file_format=True)


def test_philips_precise_scaling_divides_by_the_scale_slope(tmp_path):
    data = np.random.default_rng(3).integers(0, 1000, (8, 8, 5)).astype(np.float64)
    files = write_dicom_series(
        data, np.eye(4), tmp_path, modality="MR", rescale_slope=2.0, rescale_intercept=10.0
    )
    for f in files:
        _philips(f, 0.5)
    assert read_header(files[0]).philips_scale_slope == 0.5
    display = mr.load_volume(tmp_path)
    precise = mr.load_volume(tmp_path, philips_scaling="precise")
    # dcm2niix's precise value: (PV * RS + RI) / (RS * SS) = displayed / (RS * SS)
    np.testing.assert_allclose(precise.array, display.array / (2.0 * 0.5), rtol=1e-6)
    assert display.meta["philips_scaling"] == "display" and precise.meta["philips_scaling"] == "precise"
    with pytest.raises(mr.errors.ConfigError, match="philips_scaling"):
        mr.load_volume(tmp_path, philips_scaling="float")


def test_other_vendors_are_the_same_with_precise_scaling(tmp_path):
    write_dicom_series(np.ones((8, 8, 4)), np.eye(4), tmp_path, modality="MR", rescale_slope=2.0)
    a, b = mr.load_volume(tmp_path), mr.load_volume(tmp_path, philips_scaling="precise")
    np.testing.assert_array_equal(a.array, b.array)
    assert "philips_scaling" not in a.meta


def test_single_frame_rt_dose_applies_dose_grid_scaling():
    single = read_header(get_testdata_file("rtdose_1frame.dcm"))
    multi = load_dicom_file(get_testdata_file("rtdose.dcm"), dtype="float64")
    stored = pydicom.dcmread(get_testdata_file("rtdose_1frame.dcm")).pixel_array
    assert single.slope == pytest.approx(1e-6)
    # the single frame is the multi-frame file's first frame, scaled the same way
    np.testing.assert_allclose(multi.array[0, ..., 0].T, stored * 1e-6)


def test_header_only_file_has_no_pixel_data_not_truncated(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "header_only.dcm")
    with pytest.raises(NotAnImageError, match="has no pixel data"):
        load_dicom_file(tmp_path / "header_only.dcm")


def test_multiframe_without_geometry_loads_with_a_warning(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "GridFrameOffsetVector"):
        delattr(ds, keyword)
    ds.SliceThickness = 3.0
    path = tmp_path / "nogeo.dcm"
    ds.save_as(path)
    vol = load_dicom_file(path, dtype="float64")
    assert vol.shape == (1, 10, 10, 15)
    assert vol.warnings[0].startswith("no-geometry: nogeo.dcm has no ImagePositionPatient")
    np.testing.assert_allclose(vol.affine, np.diag([-10.0, -10.0, 3.0, 1.0]))
    stored = ds.pixel_array * float(ds.DoseGridScaling)  # frames in stored order
    np.testing.assert_allclose(vol.array[0].transpose(2, 1, 0), stored)
    with pytest.raises(SeriesGeometryError, match=r"has no ImagePositionPatient.*\(strict=True\)"):
        load_dicom_file(path, strict=True)


def test_enhanced_without_functional_groups_says_so(tmp_path):
    from medres3d.synthetic import write_enhanced_dicom

    path = write_enhanced_dicom(np.ones((6, 6, 4)), np.eye(4), tmp_path / "e.dcm")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence
    shared = ds.SharedFunctionalGroupsSequence[0]
    if "PlanePositionSequence" in shared:
        del shared.PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(SeriesGeometryError, match="has no PerFrameFunctionalGroupsSequence"):
        load_dicom_file(path, strict=True)
    assert load_dicom_file(path).warnings[0].startswith("no-geometry:")


@pytest.mark.parametrize(
    "removed", ["ImagePositionPatient", "ImageOrientationPatient", "GridFrameOffsetVector"]
)
def test_multiframe_missing_one_grid_tag_is_no_geometry_never_unsupported(tmp_path, removed):
    # Each missing tag is caught by the no-geometry check before the RT Dose grid is read: a warning,
    # or SeriesGeometryError with strict, never the UnsupportedFormatError the grid reader once had.
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    delattr(ds, removed)
    path = tmp_path / "partial.dcm"
    ds.save_as(path)
    vol = load_dicom_file(path)
    assert vol.shape == (1, 10, 10, 15)
    assert [w for w in vol.warnings if w.startswith("no-geometry: partial.dcm has ")]
    with pytest.raises(SeriesGeometryError, match=r"\(strict=True\)"):
        load_dicom_file(path, strict=True)


def _strip_geometry(files, **tags) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "SpacingBetweenSlices"):
            if keyword in ds:
                delattr(ds, keyword)
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.save_as(f)


def test_single_frame_mr_series_without_geometry_loads_in_instance_order(tmp_path):
    data = np.random.default_rng(5).integers(0, 1000, (12, 10, 5)).astype(np.float64)
    files = write_dicom_series(data, make_affine((0.8, 0.9, 2.0)), tmp_path, modality="MR",
                               shuffle_instance_numbers=True)  # fmt: skip
    _strip_geometry(files, SliceThickness=2.5)
    [series] = mr.io.dicom.find_dicom_series(tmp_path)
    assert series.num_files == 5
    vol = load_dicom_series(tmp_path, dtype="float64")
    assert vol.shape == (1, 12, 10, 5) and vol.meta["no_geometry"] is True
    assert vol.warnings[0].startswith("no-geometry: none of the 5 files has ImagePositionPatient")
    assert "InstanceNumber order" in vol.warnings[0] and "2.5 mm (SliceThickness)" in vol.warnings[0]
    np.testing.assert_allclose(vol.affine, np.diag([-0.8, -0.9, 2.5, 1.0]))
    by_instance = sorted(files, key=lambda f: int(pydicom.dcmread(f).InstanceNumber))
    for k, f in enumerate(by_instance):  # stored order by InstanceNumber, not by position or name
        np.testing.assert_array_equal(vol.array[0, ..., k], pydicom.dcmread(f).pixel_array.T)
    with pytest.raises(SeriesGeometryError, match=r"in any of its 5 files.*\(strict=True\)") as err:
        load_dicom_series(tmp_path, strict=True)
    assert err.value.path == str(tmp_path)


@pytest.mark.parametrize(
    ("tags", "count", "reason"),
    [
        ({"Modality": "DX"}, 3, "modality DX"),  # projection radiographs stay out of a PACS batch
        ({"Modality": "MG"}, 2, "modality MG"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, 3, "Secondary Capture"),
        ({}, 1, "a single image"),
    ],
)
def test_projection_images_without_geometry_are_still_skipped(tmp_path, tags, count, reason):
    files = write_dicom_series(np.ones((8, 8, count)), np.eye(4), tmp_path, modality="MR")
    _strip_geometry(files, **tags)
    scan = mr.io.dicom.scan_dicom_tree(tmp_path)
    assert scan.series == [] and len(scan.skipped) == count
    assert all(reason in s.reason and s.reason.startswith("no ImagePositionPatient") for s in scan.skipped)
    with pytest.raises(NotAnImageError, match="no DICOM image series found"):
        load_dicom_series(tmp_path)


# -- resample="even" against dcm2niix's tilt (_Tilt_1) and variable-spacing (_Eq_1) corrections -----


def _corrected(folder: Path, out: Path, suffix: str):
    from dcm2niix_reference import run_dcm2niix

    converted = run_dcm2niix(folder, out)
    [corrected] = [c for c in converted if c.path.stem.endswith(suffix)]
    return corrected


def _on_our_grid(vol, converted) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dcm2niix's voxels that fall on medres3d's grid: (our index, our values, their values).

    The affines must agree within 1e-3 mm (checked by ``voxel_map``) up to a signed permutation
    and a whole-voxel shift, or, along k, a whole-number ratio of spacings (dcm2niix's finer grid).
    """
    from dcm2niix_reference import voxel_map

    theirs = converted.data[..., 0]
    mapping = np.linalg.inv(vol.affine) @ converted.affine
    ratio = np.abs(mapping[:3, :3]).sum(axis=0)  # along each of their axes: their step / our step
    step = np.ones(3, dtype=int)
    step[ratio < 1 - 1e-6] = np.rint(1 / ratio[ratio < 1 - 1e-6]).astype(int)
    every = theirs[:: step[0], :: step[1], :: step[2]]
    coarse = converted.affine @ np.diag([*step, 1])
    voxel_map(vol, coarse)  # affine agreement, on the voxels both grids share
    mapping = np.rint(np.linalg.inv(vol.affine) @ coarse)
    index = np.indices(every.shape).reshape(3, -1)
    ours = (mapping[:3, :3] @ index + mapping[:3, 3:]).astype(np.int64)
    inside = np.all((ours >= 0) & (ours < np.array(vol.spatial_shape)[:, None]), axis=0)
    ours, index = ours[:, inside], index[:, inside]
    return ours, vol.array[0][tuple(ours)], every[tuple(index)]


def test_resample_even_tilt_agrees_with_dcm2niix_tilt_correction(tmp_path):
    # -15 degrees: with +20 degrees, dcm2niix v1.0.20260724's _Tilt_1 voxels are shifted the other
    # way from its own affine (off by up to 70 on this phantom), so there medres3d is checked against
    # the DICOM positions only (test_gantry_tilt_resampled_even_gives_an_orthogonal_grid)
    from scipy.ndimage import map_coordinates

    affine = make_affine((0.7, 0.7, 2.5), tilt_deg=-15.0)
    _write_slices(tmp_path / "in", affine, [float(k) for k in range(10)])
    vol = load_dicom_series(tmp_path / "in", resample="even")
    converted = _corrected(tmp_path / "in", tmp_path / "out", "_Tilt_1")
    # the same orthogonal axes and spacings (dcm2niix flips j): the 3x3 parts agree within 1e-6 mm
    flip = np.diag([1.0, -1.0, 1.0])
    np.testing.assert_allclose(converted.affine[:3, :3], vol.affine[:3, :3] @ flip, atol=1e-6)
    # deliberate difference: dcm2niix widens the tilted axis to keep every shifted pixel (31 rows
    # here, not 20) and starts its grid elsewhere along j and k (a fractional offset); medres3d keeps
    # the series' rows and its first slice's position. So the grids are compared in world space:
    # medres3d's volume, interpolated linearly at dcm2niix's voxel centres, on the linear phantom
    theirs = converted.data[..., 0]
    index = np.indices(theirs.shape).reshape(3, -1).astype(float)
    world = converted.affine @ np.vstack([index, np.ones(index.shape[1])])
    ours_index = (np.linalg.inv(vol.affine) @ world)[:3]
    shape = np.array(vol.spatial_shape)[:, None]
    inside = np.all((ours_index >= 1) & (ours_index <= shape - 2), axis=0)  # off the fill-blended edge
    fill = float(vol.array.min())
    ours = map_coordinates(vol.array[0].astype(np.float64), ours_index[:, inside], order=1)
    near_fill = map_coordinates((vol.array[0] == fill).astype(float), ours_index[:, inside], order=1) > 0
    compared = ~near_fill & (theirs.ravel()[inside] != theirs.min())
    assert compared.sum() > 0.4 * vol.array.size  # 2058 of 4800 here
    # dcm2niix rounds to int16 (0.5) and interpolating medres3d's values adds no error on a linear
    # phantom: within 1.0 (0.47 measured)
    assert np.abs(ours[compared] - theirs.ravel()[inside][compared]).max() <= 1.0
    # medres3d's own grid against the DICOM positions (the analytic phantom), as in the tests above
    _check_linear(vol)


def test_resample_even_spacing_equals_dcm2niix_on_the_shared_slices(tmp_path):
    rng = np.random.default_rng(11)
    affine = make_affine((0.8, 0.9, 2.0))
    depths = [0.0, 1.0, 2.0, 2.7, 3.2, 4.0, 5.0, 6.0, 7.0, 8.0]  # 0.5 slice (1 mm) at the closest
    uids = {"series_uid": pydicom.uid.generate_uid(), "study_uid": pydicom.uid.generate_uid(),
            "frame_of_reference_uid": pydicom.uid.generate_uid()}  # fmt: skip
    for n, k in enumerate(depths):  # random values: the interpolation weights must agree, not just a line
        shifted = affine.copy()
        shifted[:3, 3] = (affine @ [0, 0, k, 1])[:3]
        write_dicom_series(rng.integers(200, 1000, (*SHAPE, 1)).astype(float), shifted, tmp_path / "in",
                           file_prefix=f"s{n:03d}_", shuffle_names=False, **uids)  # fmt: skip
    _as_one_acquisition(tmp_path / "in")
    vol = load_dicom_series(tmp_path / "in", resample="even")
    converted = _corrected(tmp_path / "in", tmp_path / "out", "_Eq_1")
    # deliberate difference: dcm2niix's even grid has the smallest slice distance (17 slices 1 mm
    # apart), medres3d's the median (9 slices 2 mm apart: the series' nominal spacing, not the whole
    # series upsampled because of one close pair); every second dcm2niix slice is one of medres3d's
    assert vol.shape == (1, *SHAPE, 9) and converted.data.shape[2] == 17
    index, ours, theirs = _on_our_grid(vol, converted)
    assert index.shape[1] == vol.array.size
    assert np.abs(ours - theirs).max() <= 0.5  # dcm2niix rounds to int16
    assert np.abs(vol.array[0, ..., 3] - vol.array[0, ..., 2]).max() > 50  # k=3 really interpolated
