import gzip
import os
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from medres3d.errors import (
    ConfigError,
    CorruptFileError,
    InvalidVoxelsError,
    ResourceLimitError,
    UnsupportedFormatError,
)
from medres3d.io.nifti import load_nifti


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


# voxel axes -> world: permutations/flips (axial, coronal, sagittal, flipped) and a double-oblique one
_ORIENTATIONS = {
    "axial": np.eye(3),
    "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0.0]]),
    "sagittal": np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0.0]]),
    "flipped": np.diag([-1.0, -1.0, 1.0]),
    "oblique": _rotation(0, 20) @ _rotation(2, -35),
}


def _affine(orientation: str, spacing=(0.7, 0.9, 2.5), origin=(-40.0, 12.5, 80.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _ORIENTATIONS[orientation] @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _save(tmp_path, array, affine, name="v.nii.gz", **header_fields):
    img = nib.Nifti1Image(array, affine)
    for key, value in header_fields.items():
        img.header[key] = value
    path = tmp_path / name
    nib.save(img, path)
    return path


@pytest.mark.parametrize("orientation", sorted(_ORIENTATIONS))
@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_voxels_and_geometry_equal_nibabel(tmp_path, orientation, name):
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 2000, size=(6, 7, 5)).astype(np.int16)
    path = _save(tmp_path, array, _affine(orientation), name)
    vol = load_nifti(path)
    ref = nib.load(path)
    assert vol.array.dtype == np.float32 and vol.shape == (1, 6, 7, 5)
    np.testing.assert_array_equal(vol.array[0], ref.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(vol.affine, ref.affine)
    assert vol.orientation == "".join(nib.aff2axcodes(ref.affine))
    assert vol.source == os.fspath(path) and vol.warnings == []


def test_scaling_is_applied_as_nibabel_does(tmp_path):
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    img = nib.Nifti1Image(array, np.eye(4))
    img.header.set_slope_inter(0.5, -1024.0)
    nib.save(img, tmp_path / "s.nii")
    vol = load_nifti(tmp_path / "s.nii")
    np.testing.assert_allclose(vol.array[0], array * 0.5 - 1024.0)
    assert vol.meta["rescale"] == {"slope": 0.5, "intercept": -1024.0}


def test_native_dtype_is_kept_without_scaling(tmp_path):
    array = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    vol = load_nifti(_save(tmp_path, array, np.eye(4)), dtype="native")
    assert vol.array.dtype == np.uint16
    np.testing.assert_array_equal(vol.array[0], array)
    assert vol.meta["rescale"] is None


@pytest.mark.parametrize("dtype", ["float32", "native"])
def test_big_endian_files_come_back_in_native_byte_order(tmp_path, dtype):
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    img = nib.Nifti1Image(array, np.eye(4), header=nib.Nifti1Header(endianness=">"))
    img.set_data_dtype(np.int16)
    nib.save(img, tmp_path / "be.nii.gz")
    assert nib.load(tmp_path / "be.nii.gz").header.endianness == ">"
    vol = load_nifti(tmp_path / "be.nii.gz", dtype=dtype)
    assert vol.array.dtype.isnative and vol.array.dtype == (np.int16 if dtype == "native" else np.float32)
    np.testing.assert_array_equal(vol.array[0], array)


def test_4d_becomes_channels_first(tmp_path):
    array = np.random.default_rng(2).normal(size=(4, 5, 6, 3)).astype(np.float32)
    vol = load_nifti(_save(tmp_path, array, _affine("oblique")))
    assert vol.shape == (3, 4, 5, 6)
    for c in range(3):
        np.testing.assert_array_equal(vol.array[c], array[..., c])


def test_5d_vector_field_gives_channels_and_two_long_axes_are_refused(tmp_path):
    field = np.random.default_rng(3).normal(size=(4, 5, 6, 1, 3)).astype(np.float32)
    vol = load_nifti(_save(tmp_path, field, np.eye(4), "f.nii"))
    np.testing.assert_array_equal(vol.array, np.moveaxis(field[:, :, :, 0, :], -1, 0))
    with pytest.raises(UnsupportedFormatError, match="several non-spatial axes"):
        load_nifti(_save(tmp_path, np.zeros((2, 3, 4, 2, 3), np.float32), np.eye(4), "g.nii"))


@pytest.mark.parametrize(
    ("sform_code", "qform_code", "source"),
    [(1, 1, "sform"), (0, 1, "qform"), (2, 0, "sform"), (0, 0, "pixdim")],
)
def test_qform_sform_choice_matches_nibabel(tmp_path, sform_code, qform_code, source):
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), None)
    img.set_sform(_affine("oblique"), code=sform_code)
    img.set_qform(_affine("sagittal"), code=qform_code)
    nib.save(img, tmp_path / "q.nii")
    vol = load_nifti(tmp_path / "q.nii")
    np.testing.assert_array_equal(vol.affine, nib.load(tmp_path / "q.nii").affine)
    assert vol.meta["affine_source"] == source
    # independent of nibabel's choice: the transform that was written (float32 in the header)
    written = {"sform": _affine("oblique"), "qform": _affine("sagittal")}
    if source in written:
        np.testing.assert_allclose(vol.affine, written[source], rtol=0, atol=1e-5)
    assert len(vol.warnings) == (source == "pixdim")


@pytest.mark.parametrize(
    "name",
    ["anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii", "standard.nii.gz",
     "reoriented_anat_moved.nii"],
)
def test_nibabel_shipped_files(name):
    path = os.path.join(data_path, name)
    vol = load_nifti(path)
    ref = nib.load(path)
    expected = ref.get_fdata(dtype=np.float32)
    if expected.ndim == 3:
        expected = expected[..., None]
    np.testing.assert_array_equal(vol.array, np.moveaxis(expected, -1, 0))
    np.testing.assert_array_equal(vol.affine, ref.affine)


def test_nan_policy_on_nibabel_file_with_nans():
    path = os.path.join(data_path, "resampled_anat_moved.nii")
    ref = nib.load(path).get_fdata(dtype=np.float32)
    num_bad = int(np.count_nonzero(~np.isfinite(ref)))
    with pytest.raises(InvalidVoxelsError, match=f"{num_bad} of {ref.size} voxels are NaN"):
        load_nifti(path)
    zeroed = load_nifti(path, nan_policy="zero")
    np.testing.assert_array_equal(zeroed.array[0], np.nan_to_num(ref, nan=0, posinf=0, neginf=0))
    assert "replaced by 0" in zeroed.warnings[0]
    kept = load_nifti(path, nan_policy="keep")
    assert np.count_nonzero(np.isnan(kept.array)) == num_bad and len(kept.warnings) == 1
    with pytest.raises(ConfigError, match="nan_policy"):
        load_nifti(path, nan_policy="ignore")


def _tiny_nifti_bytes(tmp_path) -> bytes:
    noise = np.random.default_rng(4).normal(size=(8, 8, 8)).astype(np.float32)  # does not compress away
    path = _save(tmp_path, noise, np.eye(4), "src.nii")
    return path.read_bytes()


def _damage(data: bytes, position: int) -> bytes:
    # overwrites deflate data in the middle: nibabel alone would decode wrong voxels silently
    return data[:position] + b"\xff" * 16 + data[position + 16 :]


def test_damaged_files_are_corrupt_file_errors(tmp_path):
    raw = _tiny_nifti_bytes(tmp_path)
    cases = {
        "empty.nii": (b"", "empty"),
        "text.nii": (b"this is not an image\n" * 40, "not a readable NIfTI header"),
        "plain.nii.gz": (raw, "not gzip-compressed"),
        "packed.nii": (gzip.compress(raw), "rename it to .nii.gz"),
        "truncated.nii": (raw[: len(raw) - 100], "truncated"),
        "truncated.nii.gz": (gzip.compress(raw)[:1200], "truncated"),
        "cut_trailer.nii.gz": (gzip.compress(raw)[:-4], "truncated"),
        "badcrc.nii.gz": (gzip.compress(raw)[:-8] + b"\0" * 8, "CRC"),
        "flipped.nii.gz": (_damage(gzip.compress(raw), 1000), "cannot read the voxel data"),
        "garbage.nii.gz": (b"\x1f\x8b" + os.urandom(500), "NIfTI"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CorruptFileError, match=words) as info:
            load_nifti(tmp_path / name)
        assert info.value.path == os.fspath(tmp_path / name)


@pytest.mark.parametrize(
    ("dim", "error", "words"),
    [
        ([3, 0, 8, 8, 1, 1, 1, 1], CorruptFileError, "must all be positive"),
        ([3, -8, 8, 8, 1, 1, 1, 1], CorruptFileError, "must all be positive"),
        ([2, 8, 64, 1, 1, 1, 1, 1], UnsupportedFormatError, "2D image"),
        ([3, 2000, 2000, 2000, 1, 1, 1, 1], ResourceLimitError, "8000000000 voxels"),
    ],
)
def test_hostile_headers_are_refused_before_reading(tmp_path, dim, error, words):
    raw = bytearray(_tiny_nifti_bytes(tmp_path))
    header = nib.Nifti1Header.from_fileobj(open(tmp_path / "src.nii", "rb"))  # noqa: SIM115
    header["dim"] = dim
    raw[:348] = header.binaryblock
    (tmp_path / "h.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(error, match=words):
        load_nifti(tmp_path / "h.nii.gz", max_voxels=10**9)


def test_gzip_bomb_reads_only_what_the_header_claims(tmp_path):
    raw = _tiny_nifti_bytes(tmp_path)
    # zeros after a small image, more than the 1 MiB read past the image to reach the CRC: the
    # rest is never decompressed (a real bomb would be gigabytes; the cap is what is tested)
    bomb = gzip.compress(raw + b"\0" * (8 * 2**20), compresslevel=1)
    (tmp_path / "bomb.nii.gz").write_bytes(bomb)
    vol = load_nifti(tmp_path / "bomb.nii.gz")
    np.testing.assert_array_equal(vol.array, load_nifti(tmp_path / "src.nii").array)
    assert "CRC was not verified" in vol.warnings[0]


def test_multi_member_gzip_as_bgzip_writes(tmp_path):
    raw = _tiny_nifti_bytes(tmp_path)
    members = b"".join(gzip.compress(raw[i : i + 500]) for i in range(0, len(raw), 500))
    (tmp_path / "bgz.nii.gz").write_bytes(members + b"\0" * 64)
    vol = load_nifti(tmp_path / "bgz.nii.gz")
    np.testing.assert_array_equal(vol.array, load_nifti(tmp_path / "src.nii").array)
    assert vol.warnings == []


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((3, 4, 5), np.complex64), "complex"),
        (np.zeros((3, 4, 5), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), "RGB"),
    ],
)
def test_unsupported_voxel_types(tmp_path, array, words):
    with pytest.raises(UnsupportedFormatError, match=words):
        load_nifti(_save(tmp_path, array, np.eye(4), "c.nii"))


def test_singular_affine_is_corrupt(tmp_path):
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), None)
    img.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    nib.save(img, tmp_path / "z.nii")
    with pytest.raises(CorruptFileError, match="singular"):
        load_nifti(tmp_path / "z.nii")


def test_random_header_damage_gives_only_project_errors(tmp_path):
    # bytes changed anywhere in the header: the load succeeds or raises a MedRes3DError, never
    # an IndexError/struct.error/... from deep inside nibabel or numpy
    from medres3d.errors import MedRes3DError

    raw = _tiny_nifti_bytes(tmp_path)
    rng = np.random.default_rng(7)
    outcomes: dict[str, int] = {}
    for i in range(120):
        damaged = bytearray(raw)
        for position in rng.integers(0, 352, size=rng.integers(1, 6)):
            damaged[position] = rng.integers(0, 256)
        path = tmp_path / ("f.nii.gz" if i % 2 else "f.nii")
        path.write_bytes(gzip.compress(bytes(damaged)) if i % 2 else bytes(damaged))
        try:
            load_nifti(path, max_voxels=10**7)
            outcome = "loaded"
        except MedRes3DError as err:
            outcome = type(err).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("loaded", 0) > 0 and outcomes.get("CorruptFileError", 0) > 0, outcomes


def test_short_gzip_stream_costs_what_it_delivers_not_what_the_header_claims(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 256))  # 128 MiB of int16 claimed
    header.set_data_dtype(np.int16)
    header.set_data_offset(352)
    delivered = 3 * 2**20 + 7
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * delivered, compresslevel=1))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match=f"decompresses to {352 + delivered}") as info:
            load_nifti(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    claimed = 352 + 512 * 512 * 256 * 2
    assert str(info.value).startswith(f"{path}: truncated: the header needs {claimed} bytes")
    assert peak < 4 * delivered, f"peak traced allocation {peak} bytes for {delivered} delivered"


@pytest.mark.parametrize("dtype", ["float32", "float64", "native"])
@pytest.mark.parametrize("stored", [np.int16, np.uint8, np.float32])
def test_gzip_voxels_are_scaled_exactly_as_nibabel_scales_them(tmp_path, dtype, stored):
    array = np.random.default_rng(5).integers(0, 200, size=(5, 6, 7)).astype(stored)
    img = nib.Nifti1Image(array, np.eye(4))
    img.header.set_slope_inter(0.37, -1024.5)
    nib.save(img, tmp_path / "s.nii.gz")
    vol = load_nifti(tmp_path / "s.nii.gz", dtype=dtype)
    proxy = nib.load(tmp_path / "s.nii.gz").dataobj
    expected = np.asanyarray(proxy) if dtype == "native" else np.asanyarray(proxy, dtype=dtype)
    assert vol.array.dtype == expected.dtype
    np.testing.assert_array_equal(vol.array[0], expected)


def _with_stored_pixdim(tmp_path, name, sform_code, qform_code, pixdim):
    """A file whose header bytes hold ``pixdim`` as given (nibabel would fix it on save)."""
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), _affine("oblique", spacing=(0.8, 0.8, 2.0)))
    img.set_sform(img.affine, code=sform_code)
    img.set_qform(img.affine, code=qform_code)
    raw = bytearray(img.to_bytes())
    header = nib.Nifti1Header(bytes(raw[:348]), check=False)
    header["pixdim"] = pixdim
    raw[:348] = header.binaryblock
    path = tmp_path / name
    path.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    return path


@pytest.mark.parametrize("name", ["p.nii", "p.nii.gz"])
@pytest.mark.parametrize(("sform_code", "qform_code", "source"), [(0, 1, "qform"), (0, 0, "affine is these")])
@pytest.mark.parametrize(
    ("pixdim", "shown"),
    [
        ([1, 0.8, 0, 2, 1, 1, 1, 1], r"\(0\.8, 0\.0, 2\.0\)"),
        ([-1, -0.8, 0.8, 2, 1, 1, 1, 1], r"\(-0\.8, 0\.8, 2\.0\)"),
        ([1, 0.8, 0.8, np.nan, 1, 1, 1, 1], r"\(0\.8, 0\.8, nan\)"),
    ],
)
def test_bad_voxel_size_is_refused_when_the_affine_is_built_from_it(
    tmp_path, name, sform_code, qform_code, source, pixdim, shown
):
    path = _with_stored_pixdim(tmp_path, name, sform_code, qform_code, pixdim)
    with pytest.raises(CorruptFileError, match=f"pixdim\\[1:4\\] is {shown}") as info:
        load_nifti(path)
    assert str(info.value).startswith(f"{path}: ") and source in info.value.reason


def test_bad_voxel_size_is_harmless_under_a_valid_sform(tmp_path):
    path = _with_stored_pixdim(tmp_path, "s.nii.gz", 1, 1, [1, 0.8, 0, 2, 1, 1, 1, 1])
    vol = load_nifti(path)
    np.testing.assert_array_equal(vol.affine, nib.load(path).affine)
    np.testing.assert_allclose(vol.spacing, (0.8, 0.8, 2.0))
    assert vol.meta["affine_source"] == "sform" and vol.warnings == []


@pytest.mark.parametrize("name", ["big.nii", "big.nii.gz"])
def test_max_bytes_refuses_from_the_header_before_reading(tmp_path, name):
    from medres3d.io.readers import load_volume

    array = np.zeros((16, 16, 16), np.float64)  # 32768 bytes of voxels after a 352-byte header
    path = _save(tmp_path, array, np.eye(4), name)
    with pytest.raises(ResourceLimitError, match=r"needs 33120 bytes \(data offset 352 \+ 32768 of voxels\)"):
        load_volume(path, max_bytes=33119)
    assert load_volume(path, max_bytes=33120).shape == (1, 16, 16, 16)
    with pytest.raises(ConfigError, match="max_bytes must be a positive integer or None, got 0"):
        load_volume(path, max_bytes=0)


def test_data_offset_padding_counts_against_max_bytes(tmp_path):
    # vox_offset far into a stream of zeros: the voxels are small but reaching them means
    # decompressing the padding, which the voxel limit alone would allow
    image = nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4))
    image.header.set_data_offset(64 * 2**20)  # nibabel writes zeros up to the offset
    path = tmp_path / "padded.nii.gz"
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=1))
    assert np.all(load_nifti(path).array == 1)
    with pytest.raises(ResourceLimitError, match=f"data offset {64 * 2**20} "):
        load_nifti(path, max_bytes=2**20)


def _with_stored_codes(tmp_path, sform_code, qform_code):
    """A file whose header bytes hold the codes as given (nibabel refuses to write invalid ones)."""
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), None)
    img.set_sform(_affine("oblique"), code=1)
    img.set_qform(_affine("sagittal"), code=1)
    raw = bytearray(img.to_bytes())
    # NIfTI-1 header: qform_code (int16) at byte 252, sform_code (int16) at byte 254
    raw[252:256] = np.array([qform_code, sform_code], dtype="<i2").tobytes()
    path = tmp_path / "codes.nii"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    ("sform_code", "qform_code", "source", "named"),
    [(7, 1, "qform", "sform_code 7"), (1, -1, "sform", "qform_code -1"), (-3, 2, "qform", "sform_code -3")],
)
def test_an_invalid_xform_code_is_a_warning_naming_the_affine_used(
    tmp_path, sform_code, qform_code, source, named
):
    path = _with_stored_codes(tmp_path, sform_code, qform_code)
    vol = load_nifti(path)
    np.testing.assert_array_equal(vol.affine, nib.load(path).affine)
    assert vol.meta["affine_source"] == source
    (warning,) = vol.warnings
    assert warning.startswith(f"invalid-xform-code: {named} ") and f"the {source} affine" in warning


def test_invalid_xform_codes_leaving_only_pixdim_are_refused(tmp_path):
    path = _with_stored_codes(tmp_path, 7, -1)
    fallback = nib.load(path).affine[:3, :3]  # nibabel: pixdim only, the oblique rotation is gone
    np.testing.assert_allclose(np.abs(fallback), np.diag(nib.load(path).header["pixdim"][1:4]), rtol=1e-6)
    with pytest.raises(CorruptFileError, match="invalid sform_code 7 and qform_code -1"):
        load_nifti(path)
