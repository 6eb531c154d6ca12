"""Single files: pydicom's shipped test files, compressed syntaxes, Enhanced multi-frame, bad inputs."""

import shutil

import numpy as np
import pydicom
import pytest
from dicom_helpers import assert_same_world, sitk_series
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from medres3d.errors import CorruptFileError, NotAnImageError, SeriesGeometryError, UnsupportedFormatError
from medres3d.io.dicom import load_dicom_file, load_dicom_series
from medres3d.io.dicom.header import read_header
from medres3d.io.dicom.pixels import read_frames
from medres3d.synthetic import (
    ct_phantom,
    make_affine,
    write_dicom_series,
    write_enhanced_dicom,
    write_non_image_object,
)

SHAPE = (6, 5, 7)


def _volume(seed=0):
    return np.random.default_rng(seed).integers(-1000, 2000, size=SHAPE).astype(np.float32)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_pydicom_compressed_and_other_encodings_equal_the_uncompressed_file(name):
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    np.testing.assert_array_equal(read_frames(read_header(get_testdata_file(name)))[0], reference)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPEGLSNearLossless_16.dcm", "693_J2KI.dcm", "rtdose.dcm"])
def test_decoding_matches_pydicom(name):
    path = get_testdata_file(name)
    expected = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(read_frames(read_header(path)).reshape(expected.shape), expected)


def test_rt_dose_multiframe_matches_simpleitk_with_dose_scaling(tmp_path):
    import SimpleITK as sitk

    path = get_testdata_file("rtdose.dcm")
    vol = load_dicom_file(path)
    image = sitk.ReadImage(path)
    scaling = float(pydicom.dcmread(path, stop_before_pixels=True).DoseGridScaling)
    np.testing.assert_allclose(vol.array[0], sitk.GetArrayFromImage(image).T * scaling, rtol=1e-6)
    origin_ras = np.array(image.GetOrigin()) * [-1, -1, 1]
    np.testing.assert_allclose(vol.affine[:3, 3], origin_ras)
    np.testing.assert_allclose(vol.spacing, image.GetSpacing())
    rle = load_dicom_file(get_testdata_file("rtdose_rle.dcm"))
    np.testing.assert_array_equal(rle.array, vol.array)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1])
def test_compressed_series_equal_the_uncompressed_series(tmp_path, syntax):
    # The encoders need >= 32x32 images, and JPEG-LS needs compressible (not random) content.
    array = np.rint(ct_phantom((32, 32, 4), lesion=False, seed=1))
    affine = make_affine((0.8, 0.8, 2.0), "coronal")
    write_dicom_series(array, affine, tmp_path / "plain")
    write_dicom_series(array, affine, tmp_path / "packed", transfer_syntax=syntax)
    plain, packed = load_dicom_series(tmp_path / "plain"), load_dicom_series(tmp_path / "packed")
    assert packed.meta["transfer_syntax"] == syntax
    np.testing.assert_array_equal(packed.array, plain.array)
    np.testing.assert_allclose(packed.affine, plain.affine)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_enhanced_multiframe_equals_the_series_and_simpleitk(tmp_path, modality):
    array = _volume(2) + (1000 if modality == "MR" else 0)
    affine = make_affine((0.7, 0.9, 2.5), "oblique", origin=(3, 4, 5))
    path = write_enhanced_dicom(
        array,
        affine,
        tmp_path / "enhanced.dcm",
        modality=modality,
        shuffle_frames=True,
        per_frame_rescale=True,
    )
    write_dicom_series(array, affine, tmp_path / "series", modality=modality)

    vol = load_dicom_file(path)

    assert vol.warnings == [] and vol.meta["num_frames"] == SHAPE[2] and vol.meta["rescale"]["per_slice"]
    series = load_dicom_series(tmp_path / "series")
    np.testing.assert_array_equal(vol.array, series.array)
    np.testing.assert_allclose(vol.affine, series.affine, atol=1e-6)
    sitk_array, sitk_affine = sitk_series(tmp_path / "series")
    assert_same_world(vol.array[0], vol.affine, sitk_array, sitk_affine)
    # The same file is found by a scan and loads the same way.
    (found,) = [
        s for s in load_dicom_series.__globals__["scan_dicom_tree"](tmp_path).series if s.is_multiframe
    ]
    np.testing.assert_array_equal(found.load().array, vol.array)


def test_compressed_enhanced_file(tmp_path):
    array = _volume(3)
    plain = write_enhanced_dicom(array, make_affine(), tmp_path / "plain.dcm")
    packed = write_enhanced_dicom(array, make_affine(), tmp_path / "rle.dcm", transfer_syntax=RLELossless)
    np.testing.assert_array_equal(load_dicom_file(packed).array, load_dicom_file(plain).array)


def test_enhanced_frames_in_different_orientations_are_refused(tmp_path):
    path = write_enhanced_dicom(_volume(4), make_affine(), tmp_path / "e.dcm")
    ds = pydicom.dcmread(path)
    plane = pydicom.Dataset()
    plane.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence = [plane]
    ds.save_as(path)
    with pytest.raises(SeriesGeometryError, match="frames differ in ImageOrientationPatient"):
        load_dicom_file(path)


def test_rgb_file_is_refused():
    with pytest.raises(UnsupportedFormatError, match="colour image"):
        load_dicom_file(get_testdata_file("SC_rgb_rle.dcm"))


@pytest.mark.parametrize(
    ("name", "words"), [("liver_1frame.dcm", "Segmentation Storage"), ("test-SR.dcm", "SR Storage")]
)
def test_seg_and_sr_are_not_images(name, words):
    with pytest.raises(NotAnImageError, match=words) as info:
        load_dicom_file(get_testdata_file(name))
    assert info.value.path.endswith(name)


def test_single_2d_file_asks_for_the_series_folder(tmp_path):
    with pytest.raises(UnsupportedFormatError, match="single 2D slice; pass the series folder"):
        load_dicom_file(get_testdata_file("CT_small.dcm"))
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "only.dcm")
    with pytest.raises(UnsupportedFormatError, match="single 2D slice") as info:
        load_dicom_series(tmp_path)
    assert info.value.path == str(tmp_path / "only.dcm")


def test_bad_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    text = tmp_path / "text.dcm"
    text.write_text("patient: nobody\n" * 20)
    truncated = tmp_path / "truncated.dcm"
    with open(get_testdata_file("CT_small.dcm"), "rb") as fp:
        truncated.write_bytes(fp.read()[:400])
    dicomdir = write_non_image_object("DICOMDIR", tmp_path / "DICOMDIR")
    cases = [
        (empty, CorruptFileError, "empty file"),
        (text, CorruptFileError, "not a DICOM file"),
        (truncated, CorruptFileError, "truncated"),
        (dicomdir, NotAnImageError, "DICOMDIR"),
        (tmp_path / "absent.dcm", CorruptFileError, "cannot read file"),
    ]
    for path, error, words in cases:
        with pytest.raises(error, match=words) as info:
            load_dicom_file(path)
        assert info.value.path == str(path)


def test_truncated_pixel_data_of_shipped_file():
    header = read_header(get_testdata_file("MR_truncated.dcm"))
    with pytest.raises(CorruptFileError, match="truncated"):
        read_frames(header)


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")  # pydicom's, before our error
@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_undecodable_compressed_slice_names_the_file(tmp_path, syntax):
    array = np.rint(ct_phantom((32, 32, 4), lesion=False, seed=2))
    files = write_dicom_series(array, make_affine(), tmp_path, transfer_syntax=syntax, shuffle_names=False)
    with open(files[2], "r+b") as fp:
        fp.truncate(fp.seek(0, 2) - 60)
    with pytest.raises(CorruptFileError, match="cannot decode pixel data") as info:
        load_dicom_series(tmp_path)
    assert info.value.path == str(files[2])


def test_deflated_enhanced_file_header_is_read_without_inflating_the_pixels(tmp_path):
    import tracemalloc

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    # random values do not deflate: the pixel data (6.5 MB) stays far larger than the header
    array = np.random.default_rng(5).integers(-1000, 2000, size=(128, 128, 200)).astype(np.float32)
    plain = write_enhanced_dicom(array, make_affine(), tmp_path / "plain.dcm")
    packed = write_enhanced_dicom(
        array, make_affine(), tmp_path / "deflated.dcm", transfer_syntax=DeflatedExplicitVRLittleEndian
    )
    tracemalloc.start()
    try:
        header = read_header(packed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert header.frames == 200 and header.transfer_syntax == DeflatedExplicitVRLittleEndian
    assert peak < array.size * 2, f"peak {peak} bytes: more than the {array.size * 2}-byte pixel data"
    assert header == read_header(packed, fast=False)
    np.testing.assert_array_equal(load_dicom_file(packed).array, load_dicom_file(plain).array)
