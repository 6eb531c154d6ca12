"""Real Enhanced files from pydicom-data (the ``pydicom-data`` package, in the test extras).

``emri_small.dcm`` is a real 10-frame Enhanced MR export without functional groups or position tags
(the case issue 12 names), also stored big endian, RLE, JPEG 2000 and JPEG-LS; ``eCT_Supplemental.dcm``
a 2-frame Enhanced CT. References: pydicom's own decoding and dcm2niix's conversion.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dcm2niix_reference import matched_voxels, run_dcm2niix
from pydicom.data import get_testdata_file

from medres3d.errors import SeriesGeometryError
from medres3d.io import load_volume
from medres3d.io.dicom import load_dicom_series
from medres3d.io.dicom.framegroups import frame_groups_from_dataset, read_frame_groups
from medres3d.io.dicom.header import read_header

# without pydicom-data, get_testdata_file would try to download the files: skip instead
pytest.importorskip("data_store", reason="pydicom-data is not installed (pip install pydicom-data)")

EMRI = ["emri_small.dcm", "emri_small_big_endian.dcm", "emri_small_RLE.dcm",
        "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"]  # fmt: skip


def _copy(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name.removesuffix(".dcm")
    folder.mkdir()
    shutil.copy(get_testdata_file(name), folder / name)
    return folder


@pytest.mark.parametrize("name", EMRI)
def test_emri_small_without_geometry_loads_with_a_warning_and_pydicoms_voxels(tmp_path, name):
    folder = _copy(name, tmp_path)
    volume = load_volume(folder)
    [warning] = volume.warnings
    assert warning.startswith(f"no-geometry: {name} has no PerFrameFunctionalGroupsSequence")
    ds = pydicom.dcmread(folder / name)
    expected = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    np.testing.assert_array_equal(volume.array[0], expected.transpose(2, 1, 0))  # (frames, rows, cols)
    spacing = float(ds.SpacingBetweenSlices)
    np.testing.assert_allclose(np.abs(np.diag(volume.affine)[:3]), [1.0, 1.0, spacing])
    with pytest.raises(SeriesGeometryError, match="strict=True"):
        load_volume(folder, strict=True)


def test_emri_small_voxels_equal_dcm2niix(tmp_path):
    # dcm2niix converts it too, with "Unable to determine slice direction"; its grid is as
    # unplaced as ours, so the voxels are compared up to the flips of the axes, not by affine
    folder = _copy("emri_small.dcm", tmp_path)
    ours = load_volume(folder).array[0]
    [converted] = run_dcm2niix(folder, tmp_path / "out")
    theirs = converted.data[..., 0]
    assert theirs.shape == ours.shape
    flips = [axes for axes in ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))
             if np.array_equal(np.flip(theirs, axes) if axes else theirs, ours)]  # fmt: skip
    assert flips  # the same voxels, in some axis direction


def test_enhanced_ct_supplemental_equals_dcm2niix_and_pydicom(tmp_path):
    folder = _copy("eCT_Supplemental.dcm", tmp_path)
    header = read_header(folder / "eCT_Supplemental.dcm")
    # the byte reader of the functional groups gives what pydicom reads
    assert read_frame_groups(header) == frame_groups_from_dataset(
        pydicom.dcmread(folder / "eCT_Supplemental.dcm", stop_before_pixels=True)
    )
    volume = load_dicom_series(folder)
    assert volume.warnings == [] and volume.shape == (1, 512, 512, 2)
    [converted] = run_dcm2niix(folder, tmp_path / "out")
    np.testing.assert_allclose(matched_voxels(volume, converted), volume.array, atol=0.5)  # affines: 1e-3 mm
