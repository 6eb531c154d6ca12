"""An Enhanced series written as several multi-frame files (slabs, or one frame per file)."""

import nibabel as nib
import numpy as np
import pytest
from dicom_helpers import assert_same_world

from medres3d.errors import SeriesGeometryError
from medres3d.io.dicom import load_dicom_file, load_dicom_series
from medres3d.io.dicom.scan import scan_dicom_tree
from medres3d.synthetic import ct_phantom, make_affine, write_enhanced_dicom, write_nifti

SHAPE = (12, 10, 9)
UID = "1.2.826.0.1.3680043.8.498.4242"


def _phantom():
    # integral HU: the DICOM files store integers, the NIfTI reference must hold the same values
    return np.round(ct_phantom(SHAPE, seed=3)).astype(np.float32)


def _slab_affine(affine, first):
    """The affine of a slab starting at slice ``first``: the same grid, shifted along k."""
    return affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, first], [0, 0, 0, 1]], dtype=float)


def _write_slabs(array, affine, folder, bounds, **options):
    folder.mkdir()
    for n, (a, b) in enumerate(bounds):
        write_enhanced_dicom(
            array[:, :, a:b],
            _slab_affine(affine, a),
            folder / f"slab{n}.dcm",
            series_uid=UID,
            study_uid=UID + ".1",
            seed=n,
            **options,
        )


def test_slabs_load_as_one_volume_equal_to_nifti_and_the_single_file(tmp_path):
    array = _phantom()
    affine = make_affine((0.8, 0.9, 2.0), "oblique", origin=(5, -3, 7))
    _write_slabs(
        array,
        affine,
        tmp_path / "slabs",
        [(0, 3), (3, 5), (5, 9)],
        shuffle_frames=True,
        per_frame_rescale=True,
    )
    write_enhanced_dicom(array, affine, tmp_path / "single.dcm", series_uid=UID + ".2")
    write_nifti(array, affine, tmp_path / "ref.nii.gz")

    (series,) = scan_dicom_tree(tmp_path / "slabs").series
    assert (series.num_files, series.num_frames, series.part) == (3, SHAPE[2], "")
    vol = load_dicom_series(tmp_path / "slabs")

    assert vol.warnings == []
    assert (vol.meta["num_files"], vol.meta["num_frames"]) == (3, SHAPE[2])
    reference = nib.load(tmp_path / "ref.nii.gz")
    assert_same_world(vol.array[0], vol.affine, np.asarray(reference.dataobj), reference.affine)
    single = load_dicom_file(tmp_path / "single.dcm")
    np.testing.assert_array_equal(vol.array, single.array)
    np.testing.assert_allclose(vol.affine, single.affine, atol=1e-6)


def test_one_frame_per_file_reports_a_missing_file_like_a_single_frame_series(tmp_path):
    array = _phantom()
    affine = make_affine((1.0, 1.0, 2.5))
    _write_slabs(array, affine, tmp_path / "frames", [(k, k + 1) for k in range(SHAPE[2]) if k != 4])

    vol = load_dicom_series(tmp_path / "frames")

    assert vol.shape == (1, *SHAPE) and vol.meta["missing_slices"] == [4]
    assert [w.split(":")[0] for w in vol.warnings] == ["missing-slice"]
    kept = [k for k in range(SHAPE[2]) if k != 4]
    np.testing.assert_array_equal(vol.array[0][:, :, kept], array[:, :, kept])
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    with pytest.raises(SeriesGeometryError, match="missing"):
        load_dicom_series(tmp_path / "frames", strict=True)


def test_a_repeated_slab_is_dropped_as_a_duplicate(tmp_path):
    array = _phantom()
    affine = make_affine((1.0, 1.0, 2.0))
    _write_slabs(array, affine, tmp_path / "dup", [(0, 5), (5, 9), (5, 9)])

    vol = load_dicom_series(tmp_path / "dup")

    assert [w.split(":")[0] for w in vol.warnings] == ["duplicate-slice"]
    np.testing.assert_array_equal(vol.array[0], array)


def test_slabs_in_two_orientations_are_two_series(tmp_path):
    array = _phantom()
    folder = tmp_path / "mixed"
    axial = make_affine((1.0, 1.0, 2.0), "axial")
    _write_slabs(array, axial, folder, [(0, 4), (4, 9)])
    coronal = make_affine((1.0, 1.0, 2.0), "coronal")
    for n, (a, b) in enumerate([(0, 5), (5, 9)]):
        write_enhanced_dicom(
            array[:, :, a:b],
            _slab_affine(coronal, a),
            folder / f"cor{n}.dcm",
            series_uid=UID,
            study_uid=UID + ".1",
        )

    found = scan_dicom_tree(folder).series

    assert sorted(s.part for s in found) == ["axial", "coronal"]
    for s in found:
        vol = s.load()
        assert vol.warnings == []
        # the loader orders slices along the normal: compare in world space
        assert_same_world(vol.array[0], vol.affine, array, axial if s.part == "axial" else coronal)
