"""Series written by write_dicom_series must load in SimpleITK with the same voxels at the same places."""

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medres3d.errors import ConfigError
from medres3d.synthetic import ORIENTATIONS, make_affine, write_dicom_series, write_nifti
from medres3d.synthetic.dicom_common import COMPRESSED_SYNTAXES, UNCOMPRESSED_SYNTAXES

FLIPS = [(False, False, False), (True, False, True), (False, True, False)]


def read_series_with_sitk(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("flip", FLIPS, ids=["noflip", "flip-ik", "flip-j"])
def test_series_matches_simpleitk_voxels_and_world_positions(
    tmp_path, small_ct, orientation, flip, sitk_to_ras, canonical
):
    affine = make_affine((0.7, 0.9, 1.6), orientation, flip, origin=(10.0, -20.0, 30.0))
    write_dicom_series(small_ct, affine, tmp_path)
    array, sitk_affine = sitk_to_ras(read_series_with_sitk(tmp_path))
    expected_voxels, expected_affine = canonical(small_ct, affine)
    got_voxels, got_affine = canonical(array, sitk_affine)
    np.testing.assert_array_equal(got_voxels, expected_voxels)
    np.testing.assert_allclose(got_affine, expected_affine, atol=1e-4)


@pytest.mark.parametrize("orientation", ["coronal", "oblique"])
def test_nifti_matches_simpleitk_and_nibabel(tmp_path, small_ct, orientation, sitk_to_ras):
    import nibabel as nib
    import SimpleITK as sitk

    affine = make_affine((0.7, 0.9, 1.6), orientation, (True, False, False), origin=(5.0, 6.0, -7.0))
    path = write_nifti(small_ct, affine, tmp_path / "v.nii.gz")
    image = nib.load(path)
    np.testing.assert_array_equal(np.asarray(image.dataobj), small_ct)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    array, sitk_affine = sitk_to_ras(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(array, small_ct)
    np.testing.assert_allclose(sitk_affine, affine, atol=1e-4)


def test_tags_are_valid_and_consistent(tmp_path, small_ct):
    affine = make_affine((0.7, 0.9, 1.6))
    files = write_dicom_series(small_ct, affine, tmp_path, shuffle_instance_numbers=True, seed=3)
    datasets = [pydicom.dcmread(f) for f in files]
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.SOPClassUID == pydicom.uid.CTImageStorage
    assert (first.Rows, first.Columns) == (11, 14)  # rows run along j, columns along i
    assert [float(v) for v in first.PixelSpacing] == [0.9, 0.7]  # (between rows, between columns)
    assert float(first.SliceThickness) == pytest.approx(1.6)
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(files)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert sorted(ds.InstanceNumber for ds in datasets) == list(range(1, 8))
    assert [ds.InstanceNumber for ds in datasets] != list(range(1, 8))
    # Positions: LPS of affine @ [0, 0, k]; SliceLocation along the normal.
    for k, ds in enumerate(datasets):
        world = affine @ [0, 0, k, 1]
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], [-world[0], -world[1], world[2]]
        )
        assert float(ds.SliceLocation) == pytest.approx(world[2])
    assert len({f.name for f in files}) == len(files)


def test_skip_and_duplicate_slices(tmp_path, small_ct):
    files = write_dicom_series(small_ct, make_affine(), tmp_path, skip_slices=[3], duplicate_slices=[1])
    positions = sorted(float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in files)
    assert positions == [0.0, 1.0, 1.0, 2.0, 4.0, 5.0, 6.0]


def test_mr_series_has_mr_tags_and_no_identity_rescale(tmp_path):
    files = write_dicom_series(
        np.full((8, 8, 4), 300.0), make_affine(), tmp_path, modality="MR", echo_number=2, acquisition_number=5
    )
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert "RescaleSlope" not in ds
    assert (float(ds.EchoTime), float(ds.RepetitionTime), float(ds.MagneticFieldStrength)) == (
        12.0,
        500.0,
        1.5,
    )
    assert (ds.EchoNumbers, ds.AcquisitionNumber) == (2, 5)
    np.testing.assert_array_equal(ds.pixel_array, 300)


def _decode_sorted(files) -> np.ndarray:
    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack(
        [ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets], axis=-1
    )


@pytest.mark.parametrize("syntax", UNCOMPRESSED_SYNTAXES[1:] + COMPRESSED_SYNTAXES, ids=lambda s: s.name)
@pytest.mark.parametrize(
    ("representation", "intercept"), [(0, -1024.0), (1, 0.0)], ids=["unsigned", "signed"]
)
def test_compressed_copies_decode_to_the_same_values(tmp_path, syntax, representation, intercept):
    from medres3d.synthetic import ct_phantom

    # 32 x 32 slices: JPEG 2000 (six wavelet levels) needs at least that.
    volume = np.rint(ct_phantom((32, 33, 4), noise_hu=30.0, seed=2))
    files = write_dicom_series(
        volume,
        make_affine(),
        tmp_path,
        transfer_syntax=syntax,
        pixel_representation=representation,
        rescale_intercept=intercept,
    )
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(_decode_sorted(files), volume)


def test_rescale_slope_quantizes_to_half_a_step(tmp_path, small_ct):
    files = write_dicom_series(small_ct + 0.3, make_affine(), tmp_path, rescale_slope=0.5, bits_stored=16)
    np.testing.assert_allclose(_decode_sorted(files), small_ct + 0.3, atol=0.25)


def test_tilted_series_carries_gantry_tilt(tmp_path, small_ct):
    files = write_dicom_series(small_ct, make_affine((1, 1, 2), tilt_deg=12.0), tmp_path)
    ds = pydicom.dcmread(files[0])
    assert float(ds.GantryDetectorTilt) == pytest.approx(12.0)
    row, col = (
        np.array(ds.ImageOrientationPatient[:3], float),
        np.array(ds.ImageOrientationPatient[3:], float),
    )
    step = np.array(pydicom.dcmread(files[1]).ImagePositionPatient, float) - np.array(
        ds.ImagePositionPatient, float
    )
    cos = abs(step @ np.cross(row, col)) / np.linalg.norm(step)
    assert np.degrees(np.arccos(cos)) == pytest.approx(12.0, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"transfer_syntax": pydicom.uid.JPEGBaseline8Bit}, "transfer_syntax"),
        ({"rescale_intercept": 0.0, "pixel_representation": 0}, "stored values"),
        ({"skip_slices": [99]}, "skip_slices"),
        ({"modality": "PET"}, "modality"),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path, small_ct, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        write_dicom_series(small_ct, make_affine(), tmp_path, **kwargs)


def test_sheared_in_plane_axes_are_refused(tmp_path, small_ct):
    affine = make_affine()
    affine[:3, 1] = [0.5, 1.0, 0.0]
    with pytest.raises(ConfigError, match="perpendicular"):
        write_dicom_series(small_ct, affine, tmp_path)


def test_one_study_time_for_every_file_of_a_series_even_when_writing_crosses_a_second(tmp_path, monkeypatch):
    # dcm2niix takes a changed StudyTime for another study and splits the series: the writer took
    # the clock for every slice, and the dcm2niix comparisons failed when a write crossed a second
    from medres3d.synthetic import dicom_common, dicom_writer

    clock = iter(f"12{s // 60:02d}{s % 60:02d}" for s in range(1000))  # a second later at every call
    for module in (dicom_common, dicom_writer):
        monkeypatch.setattr(module, "now_strings", lambda: ("20260101", next(clock)))
    files = write_dicom_series(np.zeros((4, 4, 5)), make_affine(), tmp_path)
    times = {(str(ds.StudyDate), str(ds.StudyTime), str(ds.SeriesTime)) for ds in map(pydicom.dcmread, files)}
    assert len(times) == 1
