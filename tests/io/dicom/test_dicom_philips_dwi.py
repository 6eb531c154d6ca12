"""Philips single-frame diffusion: private b-value (2001,1003), gradient (2005,10B0/B1/B2); against dcm2niix.

Synthetic Philips-like series from :func:`medres3d.synthetic.dicom_4d.write_multivolume_series`
(``diffusion_tags="philips"``: the standard (0018,9087/9089) moved into Philips' private blocks).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dcm2niix_reference import assert_diffusion_matches, matched_voxels, run_dcm2niix

from medres3d.io.dicom import find_dicom_series, load_dicom_series
from medres3d.io.dicom.header import read_header
from medres3d.synthetic import make_affine
from medres3d.synthetic.dicom_4d import write_multivolume_series

DIRECTIONS = [(0.0, 0.0, 0.0), (0.6, 0.8, 0.0), (0.0, 0.6, 0.8), (0.8, 0.0, 0.6)]


def _volumes(n=4, shape=(24, 20, 10)):
    rng = np.random.default_rng(3)
    return [rng.integers(0, 1000, shape).astype(np.float64) for _ in range(n)]


@pytest.mark.parametrize("tags", ["philips", "both"])
def test_philips_dwi_splits_by_private_b_value_and_direction_like_dcm2niix(tmp_path, tags):
    volumes = _volumes()
    files = write_multivolume_series(volumes, make_affine((2.0, 2.0, 3.0), "oblique"), tmp_path / "in",
                                     b_values=[0, 1000, 1000, 1000], gradients=DIRECTIONS,
                                     diffusion_tags=tags)  # fmt: skip
    header = read_header(files[15])
    assert header.b_value == 1000.0
    np.testing.assert_allclose(header.gradient, DIRECTIONS[1], atol=1e-6)  # FL: float32 precision
    assert read_header(files[15], fast=False) == header  # the fast parser and pydicom agree
    parts = [s.part for s in find_dicom_series(tmp_path / "in")]
    assert parts == ["b0", "b1000 dir1", "b1000 dir2", "b1000 dir3"]
    volume = load_dicom_series(tmp_path / "in", as_4d=True)
    assert volume.warnings == []
    np.testing.assert_allclose(volume.array, np.stack(volumes), atol=0.5)
    assert_diffusion_matches(volume, tmp_path / "in", tmp_path / "out", atol=0.5)
    np.testing.assert_allclose(volume.meta["b_vectors_lps"], DIRECTIONS, atol=1e-6)


def test_philips_tags_under_another_creator_are_not_read(tmp_path):
    files = write_multivolume_series(_volumes(n=2), make_affine(), tmp_path, b_values=[0, 1000],
                                     gradients=DIRECTIONS[:2], diffusion_tags="philips")  # fmt: skip
    ds = pydicom.dcmread(files[15])
    ds[0x20010010].value = "SOMEONE ELSE"
    ds[0x20050010].value = "SOMEONE ELSE"
    ds.save_as(files[15])
    for fast in (True, False):
        header = read_header(files[15], fast=fast)
        assert header.b_value is None and header.gradient is None


def test_philips_isotropic_image_is_its_own_part_and_left_out_of_the_4d_stack_like_dcm2niix(tmp_path):
    volumes = _volumes(n=5)
    directions = [*DIRECTIONS, (0.0, 0.0, 0.0)]  # the last: Philips' derived isotropic (trace) image
    write_multivolume_series(volumes, make_affine((2.0, 2.0, 3.0), "oblique"), tmp_path / "in",
                             b_values=[0, 1000, 1000, 1000, 1000], gradients=directions,
                             diffusion_tags="philips")  # fmt: skip
    series = find_dicom_series(tmp_path / "in")
    assert [s.part for s in series] == ["b0", "b1000 dir1", "b1000 dir2", "b1000 dir3", "b1000 isotropic"]
    volume = load_dicom_series(tmp_path / "in", as_4d=True)
    [warning] = volume.warnings
    assert warning.startswith("isotropic-excluded: 1 volume(s) (b1000 isotropic)")
    assert volume.meta["b_values"] == [0.0, 1000.0, 1000.0, 1000.0]
    np.testing.assert_allclose(volume.array, np.stack(volumes[:4]), atol=0.5)
    # dcm2niix leaves the isotropic image out of its DWI file too: the same 4 volumes, b-values,
    # b-vectors; it keeps it only in a second file (_ADC: all 5 volumes, the isotropic one last),
    # which is our part of its own
    assert_diffusion_matches(volume, tmp_path / "in", tmp_path / "out", atol=0.5)
    [theirs] = [c for c in run_dcm2niix(tmp_path / "in", tmp_path / "out2") if c.path.stem.endswith("_ADC")]
    trace = load_dicom_series(tmp_path / "in", series_uid=series[-1].key)
    np.testing.assert_allclose(trace.array[0], volumes[4], atol=0.5)
    assert theirs.data.shape[3] == 5
    np.testing.assert_allclose(matched_voxels(trace, theirs)[4], trace.array[0], atol=0.5)
