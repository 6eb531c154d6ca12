"""Property-based fuzzing of the NIfTI header checks (hypothesis, fixed budget).

A valid small image gets random values in its header fields (dimensions, data type, voxel sizes,
offsets, scaling, transforms, magic) or random raw bytes over its header, as ``.nii`` or
``.nii.gz``. Loading must give a medres3d error naming the file, or a Volume that agrees with what
nibabel makes of the same header: same shape, same affine, finite voxels.
"""

from __future__ import annotations

import gzip
import io
import tempfile
import tracemalloc
from pathlib import Path

import corpus as c
import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from medres3d.errors import MedRes3DError
from medres3d.io.nifti import load_nifti

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
BASE = c.nifti_bytes(np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3), np.diag([1.0, 2.0, 3.0, 1.0]))
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=32)
SMALL_INT = st.integers(-40000, 40000)
FIELDS = {
    "dim": st.lists(st.integers(-3, 9) | SMALL_INT, min_size=8, max_size=8),
    "datatype": st.sampled_from(
        [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2304, 9999]
    ),
    "bitpix": st.sampled_from([0, 1, 8, 16, 32, 64, 128, 7]),
    "pixdim": st.lists(ANY_FLOAT, min_size=8, max_size=8),
    "vox_offset": st.sampled_from([0.0, 100.0, 348.0, 352.0, 356.0, 1e6, 1e30, -4.0]) | ANY_FLOAT,
    "scl_slope": ANY_FLOAT,
    "scl_inter": ANY_FLOAT,
    "qform_code": st.integers(-2, 5),
    "sform_code": st.integers(-2, 5),
    "quatern_b": ANY_FLOAT,
    "quatern_c": ANY_FLOAT,
    "qoffset_x": ANY_FLOAT,
    "srow_x": st.lists(ANY_FLOAT, min_size=4, max_size=4),
    "srow_z": st.lists(ANY_FLOAT, min_size=4, max_size=4),
    "magic": st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"xxxx"]),
    "sizeof_hdr": st.sampled_from([348, 540, 0, 1 << 24]),
}


@st.composite
def headers(draw) -> tuple[bytes, bool]:
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(BASE), check=False)
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4, unique=True)):
        value = draw(FIELDS[name])
        try:
            header[name] = value
        except (ValueError, OverflowError, TypeError):
            continue  # a value the field's C type cannot hold: nothing to write
    raw = bytearray(header.binaryblock + BASE[c.NIFTI_HEADER_SIZE :])
    for offset, byte in draw(st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), max_size=3)):
        raw[offset] = byte
    return bytes(raw), draw(st.booleans())


@pytest.mark.slow
@pytest.mark.timeout(120)
@FUZZ
@given(headers())
def test_random_header_values_give_a_project_error_or_a_consistent_volume(case: tuple[bytes, bool]) -> None:
    raw, compressed = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x.nii.gz" if compressed else "x.nii")
        path.write_bytes(gzip.compress(raw, mtime=0) if compressed else raw)
        tracemalloc.start()
        try:
            volume = load_nifti(path)
        except MedRes3DError as err:
            event(f"error: {type(err).__name__}")
            assert err.path == str(path) and str(err).startswith(f"{path}: "), err
            return
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < 64 * 2**20, f"peak traced allocation {peak} bytes"
        event("loaded")
        reference = nib.load(path)
        spatial = reference.shape[:3]
        assert volume.shape[1:] == spatial
        assert volume.shape[0] == int(np.prod(reference.shape[3:], dtype=np.int64))
        np.testing.assert_allclose(volume.affine, reference.affine)
        assert abs(np.linalg.det(volume.affine[:3, :3])) > 0
        assert np.all(np.isfinite(volume.array))
