import time

import numpy as np
import pytest

from medres3d.errors import ConfigError
from medres3d.synthetic import ct_phantom, mri_phantom, sphere_mask
from medres3d.synthetic.phantoms import HU_AIR, HU_LUNG


def test_sphere_mask_counts_match_the_lattice_formula():
    spacing = (0.5, 1.0, 2.0)
    mask = sphere_mask((30, 20, 12), (14.0, 9.5, 5.0), 4.0, spacing)
    x, y, z = np.meshgrid(*[np.arange(n) for n in (30, 20, 12)], indexing="ij")
    expected = ((x - 14.0) * 0.5) ** 2 + ((y - 9.5) * 1.0) ** 2 + ((z - 5.0) * 2.0) ** 2 <= 16.0
    np.testing.assert_array_equal(mask, expected)


def test_ct_tissue_ranges():
    vol = ct_phantom((64, 64, 48), noise_hu=0.0, table=True)
    assert vol.dtype == np.float32 and vol.shape == (64, 64, 48)
    assert vol[0, 0, 0] == pytest.approx(HU_AIR, abs=1)
    assert vol.min() >= -1024
    upper = vol[:, :, 40]  # lungs in the upper part of the trunk
    assert np.isclose(upper, HU_LUNG, atol=5).sum() > 200
    assert vol.max() > 400  # bone
    soft = vol[(vol > 20) & (vol < 80)]
    assert soft.size > 0.1 * vol.size


def test_lesion_changes_only_its_sphere_and_by_its_contrast():
    kwargs = {"shape": (48, 48, 32), "spacing": (1.0, 1.0, 1.5), "seed": 7}
    plain = ct_phantom(**kwargs)
    with_lesion, mask = ct_phantom(
        **kwargs, lesion=True, lesion_hu=80.0, lesion_radius_mm=5.0, return_mask=True
    )
    diff = with_lesion - plain
    assert mask.sum() > 50
    # Outside the sphere grown by the partial-volume blur nothing moves; deep inside, the full contrast.
    from scipy import ndimage

    near = ndimage.binary_dilation(mask, np.ones((3, 3, 3), bool), iterations=3)
    assert np.abs(diff[~near]).max() < 1e-3
    core = ndimage.binary_erosion(mask, iterations=2)
    np.testing.assert_allclose(diff[core].mean(), 80.0, atol=2.0)
    # The random centre sits in soft tissue, not in lung or bone.
    clean = ct_phantom(**kwargs, noise_hu=0.0)
    assert np.all((clean[mask] > -20) & (clean[mask] < 120))


def test_given_lesion_center_is_used():
    _, mask = ct_phantom(
        (40, 40, 30), lesion=True, lesion_center=(20, 22, 10), lesion_radius_mm=3, return_mask=True
    )
    np.testing.assert_allclose(np.argwhere(mask).mean(axis=0), (20, 22, 10))


def test_noise_level_matches_request():
    a = ct_phantom((48, 48, 32), noise_hu=0.0, seed=1)
    b = ct_phantom((48, 48, 32), noise_hu=20.0, seed=1)
    tissue = a > -500  # away from the clipping at -1024
    assert np.std(b[tissue] - a[tissue]) == pytest.approx(20.0, rel=0.05)


def test_seeds_vary_the_anatomy():
    assert not np.array_equal(ct_phantom((32, 32, 16), seed=1), ct_phantom((32, 32, 16), seed=2))
    np.testing.assert_array_equal(ct_phantom((32, 32, 16), seed=3), ct_phantom((32, 32, 16), seed=3))


def test_mri_is_positive_with_tissue_contrast_and_a_bright_lesion():
    plain = mri_phantom((48, 48, 40), noise=0.0, bias=0.0)
    assert plain.min() >= 0 and plain[0, 0, 0] < 1
    for signal, min_fraction in ((800.0, 0.05), (550.0, 0.01), (250.0, 0.003)):  # WM, GM, CSF
        assert np.mean(np.abs(plain - signal) < 10.0) > min_fraction
    noisy, mask = mri_phantom((48, 48, 40), lesion=True, lesion_contrast=0.5, return_mask=True)
    assert noisy.min() >= 0
    assert noisy[mask].mean() > 1.2 * noisy[mri_phantom((48, 48, 40)) > 700].mean()


def test_generation_is_fast():
    start = time.perf_counter()
    ct_phantom((64, 64, 48), lesion=True)
    mri_phantom((64, 64, 48), lesion=True)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"shape": (64, 64)}, "shape"), ({"spacing": (1, -1, 1)}, "spacing"), ({"noise_hu": -1}, "noise_hu")],
)
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ct_phantom(**kwargs)
