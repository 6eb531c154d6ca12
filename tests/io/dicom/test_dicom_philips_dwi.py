"""Philips single-frame diffusion: private b-value (2001,1003), gradient (2005,10B0/B1/B2); against dcm2niix.

Synthetic Philips-like series from :func:`medres3d.synthetic.dicom_4d.write_multivolume_series`
(``diffusion_tags="philips"``: the standard (0018,9087/9089) moved into Philips' private blocks).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dcm2niix_reference import assert_diffusion_matches

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
