import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import NormalizeIntensity
from scipy.ndimage import map_coordinates

from medres3d.errors import ConfigError
from medres3d.io.volume import Volume
from medres3d.transforms import PRESETS, PreprocessingSpec, build_transforms, preprocess


def _oblique_flipped_affine() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([-1.2, 0.9, -2.5])
    affine[:3, 3] = (10.0, -5.0, 30.0)
    return affine


def _voxel_world(affine: np.ndarray, shape) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _source_index(source_affine: np.ndarray, world: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(source_affine)
    return world @ inverse[:3, :3].T + inverse[:3, 3]


# -- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_survive_a_json_round_trip(name):
    spec = PreprocessingSpec.preset(name, spatial_size=(64, 64, 32))
    text = json.dumps(spec.to_dict())
    assert PreprocessingSpec.from_dict(json.loads(text)) == spec


def test_preset_values_and_overrides():
    ct = PreprocessingSpec.preset("ct")
    assert (ct.orientation, ct.spacing, ct.intensity, ct.window, ct.background_value) == (
        "RAS", (1.5, 1.5, 1.5), "ct-window", (-1000.0, 1000.0), 0.0
    )
    mri = PreprocessingSpec.preset("mri", spacing=2)
    assert (mri.intensity, mri.spacing, mri.background_value) == ("zscore-foreground", (2.0, 2.0, 2.0), 0.0)


def test_ct_background_follows_a_moved_output_range():
    # air (the window's low end) maps to the low end of the output range; padding must stay air
    assert PreprocessingSpec.preset("ct", output_range=(-1.0, 1.0)).background_value == -1.0
    explicit = PreprocessingSpec.preset("ct", output_range=(-1.0, 1.0), background_value=0.5)
    assert explicit.background_value == 0.5


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"orientation": "RAR"}, "orientation"),
        ({"orientation": "XYZ"}, "orientation"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be positive"),
        ({"spacing": (1.0, 1.0)}, "spacing must be a sequence of 3"),
        ({"spacing": "1,1,1"}, "spacing"),
        ({"interpolation": "cubic"}, "interpolation must be one of"),
        ({"intensity": "window"}, "intensity must be one of"),
        ({"intensity": "ct-window"}, "needs window"),
        ({"window": (400, -1000)}, "window must be \\(low, high\\)"),
        ({"spatial_size": (64, 64, 0)}, "spatial_size"),
        ({"spatial_size": (64.0, 64, 32)}, "spatial_size"),
        ({"background_value": float("nan")}, "background_value must be a finite number"),
        ({"pixdim": (1, 1, 1)}, "unknown preprocessing field"),
    ],
)
def test_invalid_fields_are_config_errors_naming_the_field(fields, words):
    with pytest.raises(ConfigError, match=words):
        PreprocessingSpec.from_dict(fields)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="valid presets: \\['ct', 'mri'\\]"):
        PreprocessingSpec.preset("pet")
    with pytest.raises(ConfigError, match="unknown preprocessing field"):
        PreprocessingSpec.preset("ct", windw=(0, 1))


# -- intensity --------------------------------------------------------------------------------


def test_ct_window_equals_the_formula():
    hu = np.random.default_rng(0).uniform(-1500, 2500, size=(1, 6, 7, 8)).astype(np.float32)
    spec = PreprocessingSpec.preset(
        "ct", orientation=None, spacing=None, window=(-160, 240), output_range=(-1, 1)
    )
    original = hu.copy()
    out = preprocess(Volume(hu, np.eye(4)), spec)
    expected = np.clip((hu - -160.0) / 400.0, 0, 1) * 2 - 1
    np.testing.assert_array_equal(hu, original)  # the volume's voxels are not modified
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    assert out.dtype == torch.float32


def test_mri_zscore_on_the_foreground_equals_numpy_and_monai_nonzero():
    rng = np.random.default_rng(1)
    image = rng.gamma(2.0, 100.0, size=(2, 8, 9, 10)).astype(np.float32)
    image[:, :3] = 0.0  # background
    image[1, 3:5] = -5.0  # below the threshold: background too
    original = image.copy()
    spec = PreprocessingSpec.preset("mri", orientation=None, spacing=None, background_value=0.0)
    out = preprocess(Volume(image, np.eye(4)), spec).numpy()
    np.testing.assert_array_equal(image, original)
    for c in range(2):
        foreground = image[c] > 0
        values = image[c][foreground].astype(np.float64)
        np.testing.assert_allclose(out[c][foreground], (values - values.mean()) / values.std(), atol=1e-5)
        assert np.all(out[c][~foreground] == 0.0)
    # on non-negative data MONAI's own nonzero z-score is the same transform
    nonneg = np.abs(image)
    nonneg[:, :3] = 0.0
    monai = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(nonneg.copy())).numpy()
    np.testing.assert_allclose(preprocess(Volume(nonneg, np.eye(4)), spec).numpy(), monai, atol=1e-5)


# -- geometry ---------------------------------------------------------------------------------


def test_orientation_only_equals_nibabel_canonical():
    array = np.random.default_rng(2).normal(size=(1, 6, 7, 5)).astype(np.float32)
    affine = np.diag([-1.0, 1.5, -2.0, 1.0])
    affine[:3, 3] = (3.0, 4.0, 5.0)
    out = preprocess(Volume(array, affine), PreprocessingSpec(orientation="RAS"))
    canonical = nib.as_closest_canonical(nib.Nifti1Image(array[0], affine))
    np.testing.assert_array_equal(out[0].numpy(), canonical.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(out.affine.numpy(), canonical.affine)


def test_resampled_voxels_sit_at_the_world_points_their_affine_says():
    # a field linear in world coordinates is reproduced exactly by (tri)linear interpolation, so
    # every output voxel must hold the field's value at the world point of its own affine
    affine = _oblique_flipped_affine()
    shape = (20, 24, 10)
    gradient, offset = np.array([0.3, -0.7, 1.1]), 5.0
    field = (_voxel_world(affine, shape) @ gradient + offset).reshape(shape).astype(np.float32)
    out = preprocess(Volume(field[None], affine), PreprocessingSpec(spacing=(1.0, 1.0, 1.0)))
    out_affine = out.affine.numpy()
    np.testing.assert_allclose(np.linalg.norm(out_affine[:3, :3], axis=0), (1.0, 1.0, 1.0))
    assert nib.aff2axcodes(out_affine) == ("R", "A", "S")
    world = _voxel_world(out_affine, out.shape[1:])
    source = _source_index(affine, world)
    inside = np.all((source >= 0) & (source <= np.array(shape) - 1), axis=1)
    assert inside.sum() > 0.3 * len(inside)
    expected = (world @ gradient + offset)[inside]
    np.testing.assert_allclose(out[0].numpy().reshape(-1)[inside], expected, atol=1e-3)


def test_resampling_matches_scipy_trilinear_interpolation_of_a_random_field():
    affine = _oblique_flipped_affine()
    shape = (14, 12, 8)
    data = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    out = preprocess(Volume(data[None], affine), PreprocessingSpec(spacing=(0.8, 1.1, 1.7)))
    world = _voxel_world(out.affine.numpy(), out.shape[1:])
    source = _source_index(affine, world)
    inside = np.all((source >= 0) & (source <= np.array(shape) - 1), axis=1)
    expected = map_coordinates(data.astype(np.float64), source[inside].T, order=1)
    np.testing.assert_allclose(out[0].numpy().reshape(-1)[inside], expected, atol=1e-4)


def test_crop_and_pad_keep_world_positions_and_pad_with_background():
    array = np.arange(1, 1 + 6 * 8 * 4, dtype=np.float32).reshape(1, 6, 8, 4)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    spec = PreprocessingSpec(spatial_size=(10, 4, 4), background_value=-7.0)
    out = preprocess(Volume(array, affine), spec)
    assert tuple(out.shape) == (1, 10, 4, 4)
    out_affine = out.affine.numpy()
    # every output voxel holds the input voxel at its world point, or the background value
    source = _source_index(affine, _voxel_world(out_affine, (10, 4, 4))).round().astype(int)
    flat = out[0].numpy().reshape(-1)
    for value, (i, j, k) in zip(flat, source, strict=True):
        inside = 0 <= i < 6 and 0 <= j < 8 and 0 <= k < 4
        assert value == (array[0, i, j, k] if inside else -7.0)


def test_build_transforms_lists_the_steps_of_the_spec():
    spec = PreprocessingSpec.preset("mri", spatial_size=(8, 8, 8))
    names = [type(t).__name__ for t in build_transforms(spec).transforms]
    assert names == [
        "EnsureType", "Orientation", "Spacing", "ForegroundZScore", "ResizeWithPadOrCrop", "EnsureType"
    ]
    names = [type(t).__name__ for t in build_transforms(PreprocessingSpec(orientation=None)).transforms]
    assert names == ["EnsureType", "EnsureType"]


def test_preprocess_accepts_a_metatensor_and_rejects_other_inputs():
    volume = Volume(np.zeros((1, 4, 4, 4), np.float32), np.eye(4))
    spec = PreprocessingSpec.preset("ct", spacing=None)
    from_tensor = preprocess(volume.to_metatensor(), spec)
    np.testing.assert_array_equal(from_tensor.numpy(), preprocess(volume, spec).numpy())
    with pytest.raises(ConfigError, match="Volume or a MetaTensor"):
        preprocess(np.zeros((1, 4, 4, 4)), spec)
