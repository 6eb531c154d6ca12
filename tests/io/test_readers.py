import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import medres3d as mr
from medres3d.errors import (
    ConfigError,
    CorruptFileError,
    InvalidVoxelsError,
    NotAnImageError,
    UnsupportedFormatError,
    VolumeLoadError,
)
from medres3d.io.readers import load_volume
from medres3d.synthetic import ct_phantom, make_affine, write_dicom_series, write_enhanced_dicom

SHAPE = (12, 10, 6)


@pytest.fixture(scope="module")
def phantom():
    return ct_phantom(SHAPE, spacing=(1.5, 1.5, 3.0), seed=3).round()


@pytest.fixture(scope="module")
def affine():
    return make_affine((1.5, 1.5, 3.0), "oblique", origin=(-10.0, 20.0, 5.0))


def test_public_name_is_load_volume():
    assert mr.load_volume is load_volume


def test_nifti_file(tmp_path, phantom, affine):
    nib.save(nib.Nifti1Image(phantom.astype(np.int16), affine), tmp_path / "ct.nii.gz")
    vol = load_volume(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(vol.array[0], phantom)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)


def test_itk_file(tmp_path, phantom):
    sitk.WriteImage(sitk.GetImageFromArray(phantom.T.copy()), str(tmp_path / "ct.nrrd"))
    np.testing.assert_array_equal(load_volume(tmp_path / "ct.nrrd").array[0], phantom)


def test_dicom_folder_and_nifti_give_the_same_volume(tmp_path, phantom, affine):
    write_dicom_series(phantom, affine, tmp_path / "series")
    nib.save(nib.Nifti1Image(phantom, affine), tmp_path / "ct.nii")
    from_dicom = load_volume(tmp_path / "series")
    from_nifti = load_volume(tmp_path / "ct.nii")
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    assert from_dicom.modality == "CT"


def test_multiframe_dicom_file_with_and_without_extension(tmp_path, phantom, affine):
    path = write_enhanced_dicom(phantom, affine, tmp_path / "enhanced.dcm")
    shutil.copy(path, tmp_path / "ENHANCED")  # DICOM files often have no extension
    shutil.copy(path, tmp_path / "enhanced.bin")  # found by the DICM magic
    for name in ("enhanced.dcm", "ENHANCED", "enhanced.bin"):
        vol = load_volume(tmp_path / name)
        np.testing.assert_array_equal(vol.array[0], phantom)
        np.testing.assert_allclose(vol.affine, affine, atol=1e-4)


def test_a_single_slice_file_is_not_a_volume(tmp_path, phantom, affine):
    files = write_dicom_series(phantom, affine, tmp_path / "series")
    with pytest.raises(UnsupportedFormatError, match="single 2D slice"):
        load_volume(files[0])


def test_bad_paths(tmp_path):
    with pytest.raises(VolumeLoadError, match="no such file or directory"):
        load_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedFormatError, match=r"unknown file type '\.txt'; supported: NIfTI"):
        load_volume(tmp_path / "notes.txt")
    (tmp_path / "text.dcm").write_text("this is a text file, not DICOM\n" * 10)
    with pytest.raises(CorruptFileError):
        load_volume(tmp_path / "text.dcm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAnImageError):
        load_volume(tmp_path / "empty")


def test_options_are_validated_before_reading(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4)), tmp_path / "a.nii")
    for kwargs, words in [
        ({"dtype": "int8"}, "dtype"),
        ({"nan_policy": "skip"}, "nan_policy"),
        ({"max_voxels": -1}, "max_voxels"),
        ({"series_uid": "1.2.3"}, "series_uid applies to DICOM only"),
    ]:
        with pytest.raises(ConfigError, match=words):
            load_volume(tmp_path / "a.nii", **kwargs)


def test_nan_policy_reaches_the_loader(tmp_path):
    array = np.ones((3, 3, 3), np.float32)
    array[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / "inf.nii")
    with pytest.raises(InvalidVoxelsError, match="1 of 27"):
        load_volume(tmp_path / "inf.nii")
    assert load_volume(tmp_path / "inf.nii", nan_policy="zero").array[0, 1, 1, 1] == 0


def test_fifo_named_like_a_scan_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedFormatError, match="not a regular file") as info:
        load_volume(fifo)
    assert info.value.path == str(fifo)
