"""Synthetic CT (HU) and MRI (T1-like) phantoms with an optional spherical lesion.

The anatomy is drawn in voxel space assuming the ``axial`` convention of
:func:`medres3d.synthetic.make_affine` (i: right, j: anterior, k: superior), scaled to the array
shape, so any shape gives a full body or head. Randomness comes from one seed split into
independent streams (anatomy, lesion position, noise): for a given seed the phantom with and
without a lesion differ only around the lesion.

Example:
    >>> from medres3d.synthetic import ct_phantom
    >>> vol = ct_phantom((64, 64, 48), lesion=True, seed=3)
    >>> vol.dtype, vol.shape, bool(vol.min() < -900 and vol.max() > 500)
    (dtype('float32'), (64, 64, 48), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from medres3d.errors import ConfigError

# Typical CT numbers (HU) of the phantom's tissues.
HU_MIN = -1024.0
HU_AIR = -1000.0
HU_LUNG = -800.0
HU_FAT = -100.0
HU_SOFT_TISSUE = 40.0
HU_LIVER = 60.0
HU_BONE = 700.0
HU_MARROW = 250.0
HU_TABLE = 200.0


class _Grid(NamedTuple):
    u: np.ndarray  # normalised coordinates in [-1, 1] along i, j, k (broadcastable)
    v: np.ndarray
    w: np.ndarray


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    dims = tuple(int(s) for s in shape)
    if len(dims) != 3 or any(s < 4 for s in dims):
        raise ConfigError(f"shape must be three integers >= 4 (i, j, k), got {tuple(shape)!r}")
    return dims  # type: ignore[return-value]


def _check_spacing(spacing: Sequence[float]) -> np.ndarray:
    sp = np.asarray(spacing, dtype=float)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ConfigError(f"spacing must be three positive finite numbers (mm), got {spacing!r}")
    return sp


def _grid(shape: tuple[int, int, int]) -> _Grid:
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    u, v, w = np.meshgrid(*axes, indexing="ij", sparse=True)
    return _Grid(u, v, w)


def _ellipsoid(g: _Grid, center: Sequence[float], semi: Sequence[float]) -> np.ndarray:
    (cu, cv, cw), (a, b, c) = center, semi
    return ((g.u - cu) / a) ** 2 + ((g.v - cv) / b) ** 2 + ((g.w - cw) / c) ** 2 <= 1.0


def sphere_mask(
    shape: Sequence[int], center: Sequence[float], radius_mm: float, spacing: Sequence[float] = (1, 1, 1)
) -> np.ndarray:
    """Boolean mask of the voxels whose centres lie within ``radius_mm`` of ``center`` (voxel units).

    Example:
        >>> int(sphere_mask((9, 9, 9), (4, 4, 4), 1.0).sum())
        7
    """
    sp = _check_spacing(spacing)
    axes = [(np.arange(n) - c) * s for n, c, s in zip(shape, center, sp, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    return x**2 + y**2 + z**2 <= radius_mm**2


def _pick_center(
    allowed: np.ndarray, radius_mm: float, spacing: np.ndarray, rng: np.random.Generator, tries: int = 300
) -> tuple[float, float, float]:
    # Rejection sampling: a random allowed voxel whose sphere (radius plus one voxel of margin) lies
    # wholly inside the allowed tissue. Far cheaper than a distance transform on large volumes.
    reach = radius_mm + float(spacing.min())
    half = np.ceil(reach / spacing).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), axis=-1).reshape(-1, 3)
    offsets = grid[((grid * spacing) ** 2).sum(axis=1) <= reach**2]
    candidates = np.flatnonzero(allowed)
    if len(candidates) == 0:
        raise ConfigError("no tissue to place the lesion in: the volume is too small for the phantom anatomy")
    shape = np.array(allowed.shape)
    best, best_fraction = None, -1.0
    for _ in range(tries):
        center = np.array(np.unravel_index(candidates[rng.integers(len(candidates))], allowed.shape))
        points = center + offsets
        inside = np.all((points >= 0) & (points < shape), axis=1)
        fraction = inside.mean() * allowed[tuple(points[inside].T)].mean()
        if fraction == 1.0:
            return tuple(float(c) for c in center)  # type: ignore[return-value]
        if fraction > best_fraction:
            best, best_fraction = center, fraction
    # No position fits the whole sphere (a tiny volume or a huge lesion): take the best found.
    return tuple(float(c) for c in best)  # type: ignore[return-value, union-attr]


def _lesion_mask(
    allowed: np.ndarray,
    center: Sequence[float] | None,
    radius_mm: float,
    spacing: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    # The lesion sphere at ``center`` (voxel coordinates), or at a random place inside ``allowed``.
    if center is None:
        picked = _pick_center(allowed, radius_mm, spacing, rng)
    else:
        picked = tuple(float(c) for c in center)
    if len(picked) != 3:
        raise ConfigError(f"lesion_center must be three voxel coordinates, got {center!r}")
    return sphere_mask(allowed.shape, picked, radius_mm, spacing)


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    anatomy, lesion, noise = np.random.SeedSequence(seed).spawn(3)
    return np.random.default_rng(anatomy), np.random.default_rng(lesion), np.random.default_rng(noise)


def _smooth_field(shape: tuple[int, int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    # Low-frequency random texture with unit standard deviation: white noise blurred on a grid twice
    # as coarse, then repeated up (the phantom's partial-volume blur later smooths the blocks away).
    coarse_shape = tuple((n + 1) // 2 for n in shape)
    coarse = ndimage.gaussian_filter(
        rng.standard_normal(coarse_shape, dtype=np.float32), sigma / 2, mode="wrap"
    )
    coarse /= max(float(coarse.std()), 1e-6)
    field = coarse.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    return field[: shape[0], : shape[1], : shape[2]]


def ct_phantom(
    shape: Sequence[int] = (64, 64, 48),
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    lesion: bool = False,
    lesion_radius_mm: float = 6.0,
    lesion_hu: float = 60.0,
    lesion_center: Sequence[float] | None = None,
    seed: int = 0,
    noise_hu: float = 15.0,
    table: bool = False,
    return_mask: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A CT-like trunk in Hounsfield units, float32, indexed (i, j, k) = (right, anterior, superior).

    Air -1000 HU around an elliptic body with a subcutaneous fat layer (-100), soft tissue (40),
    a liver (60) on the patient's right in the lower half, two lungs (-800) in the upper half,
    a spine (cortical bone 700, marrow 250) posteriorly, optionally a table (200) under the back;
    edges softened by a partial-volume blur, a faint tissue texture, and Gaussian noise; values below
    -1024 HU are clipped, as scanners do.

    Args:
        shape: array shape (i, j, k), each >= 4.
        spacing: voxel size in mm, used to make the lesion a sphere in millimetres.
        lesion: add a spherical lesion of ``lesion_hu`` HU contrast over the tissue it sits in.
        lesion_radius_mm: its radius (mm, > 0).
        lesion_hu: contrast added to the underlying tissue (positive: hyperdense; negative: hypodense).
        lesion_center: voxel coordinates of the centre; by default a random position inside the soft
            tissue or liver (never in lung or bone), far enough from other tissues to fit the sphere.
        seed: the anatomy jitter, lesion position and noise all derive from it.
        noise_hu: standard deviation of the white Gaussian noise (HU, >= 0).
        table: add a patient table below the body.
        return_mask: also return the boolean lesion mask (all False without a lesion).

    Example:
        >>> vol, mask = ct_phantom((48, 48, 32), lesion=True, lesion_radius_mm=5, return_mask=True)
        >>> bool(vol[mask].mean() > vol[~mask & (vol > 0) & (vol < 100)].mean())
        True
    """
    dims = _check_shape(shape)
    sp = _check_spacing(spacing)
    if lesion and not (lesion_radius_mm > 0 and np.isfinite(lesion_radius_mm)):
        raise ConfigError(f"lesion_radius_mm must be a positive number, got {lesion_radius_mm!r}")
    if not (noise_hu >= 0 and np.isfinite(noise_hu)):
        raise ConfigError(f"noise_hu must be a non-negative number, got {noise_hu!r}")
    rng_anatomy, rng_lesion, rng_noise = _streams(seed)
    g = _grid(dims)
    # Body size and position vary a little from seed to seed, as patients do.
    a, b = 0.86 * rng_anatomy.uniform(0.92, 1.0), 0.62 * rng_anatomy.uniform(0.9, 1.0)
    du, dv = rng_anatomy.uniform(-0.04, 0.04, size=2)
    fat_fraction = rng_anatomy.uniform(0.85, 0.92)

    radial = ((g.u - du) / a) ** 2 + ((g.v - dv) / b) ** 2
    vol = np.full(dims, HU_AIR, dtype=np.float32)
    body = np.broadcast_to(radial <= 1.0, dims)
    inner = np.broadcast_to(radial <= fat_fraction**2, dims)
    vol[body] = HU_FAT
    vol[inner] = HU_SOFT_TISSUE
    liver = _ellipsoid(g, (du + 0.38 * a, dv + 0.05, -0.5), (0.38 * a, 0.55 * b, 0.55)) & inner
    vol[liver] = HU_LIVER
    lungs = np.zeros(dims, dtype=bool)
    for side in (-1.0, 1.0):
        lungs |= _ellipsoid(g, (du + side * 0.42 * a, dv + 0.1 * b, 0.55), (0.33 * a, 0.6 * b, 0.75))
    lungs &= inner
    vol[lungs] = HU_LUNG
    spine_r2 = (g.u - du) ** 2 + ((g.v - (dv - 0.7 * b)) * a / b) ** 2
    spine = np.broadcast_to(spine_r2 <= (0.13 * a) ** 2, dims)
    marrow = np.broadcast_to(spine_r2 <= (0.09 * a) ** 2, dims)
    vol[spine] = HU_BONE
    vol[marrow] = HU_MARROW
    if table:
        table_mask = np.broadcast_to((g.v >= dv - b - 0.14) & (g.v <= dv - b - 0.08), dims)
        vol[table_mask & ~body] = HU_TABLE

    soft = (vol == HU_SOFT_TISSUE) | (vol == HU_LIVER)
    vol[soft] += 6.0 * _smooth_field(dims, rng_anatomy, 2.0)[soft]

    mask = np.zeros(dims, dtype=bool)
    if lesion:
        mask = _lesion_mask(soft, lesion_center, lesion_radius_mm, sp, rng_lesion)
        vol[mask] += np.float32(lesion_hu)

    # Partial volume at tissue boundaries, as a scanner's point spread function gives.
    vol = ndimage.gaussian_filter(vol, 0.6)
    if noise_hu:
        vol += rng_noise.standard_normal(dims, dtype=np.float32) * np.float32(noise_hu)
    # Scanners clip reconstructed values at -1024 HU (stored value 0 with the usual intercept).
    np.maximum(vol, np.float32(HU_MIN), out=vol)
    return (vol, mask) if return_mask else vol


def mri_phantom(
    shape: Sequence[int] = (64, 64, 48),
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    lesion: bool = False,
    lesion_radius_mm: float = 5.0,
    lesion_contrast: float = 0.4,
    lesion_center: Sequence[float] | None = None,
    seed: int = 0,
    noise: float = 0.02,
    bias: float = 0.2,
    scale: float = 1000.0,
    return_mask: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A T1-weighted-like head, float32, positive, indexed (i, j, k) = (right, anterior, superior).

    Tissue classes (relative signal): air 0, scalp fat 0.9, skull 0.1, CSF 0.25, grey matter 0.55,
    white matter 0.8, lateral ventricles 0.25; times ``scale``, times a smooth multiplicative bias
    field (``1 +- bias``), with Rician noise of standard deviation ``noise * scale``.

    Args:
        shape, spacing, lesion_radius_mm, lesion_center, seed, return_mask: as in :func:`ct_phantom`.
        lesion: add a spherical lesion in the white matter.
        lesion_contrast: signal added to the white matter inside the lesion (relative units).
        noise: Rician noise level relative to ``scale`` (>= 0).
        bias: amplitude of the bias field (0 <= bias < 1).
        scale: signal of a relative intensity of 1.

    Example:
        >>> vol = mri_phantom((48, 48, 32), seed=1)
        >>> bool(vol.min() >= 0 and vol.max() > 700)
        True
    """
    dims = _check_shape(shape)
    sp = _check_spacing(spacing)
    if not (noise >= 0 and np.isfinite(noise)):
        raise ConfigError(f"noise must be a non-negative number, got {noise!r}")
    if not 0 <= bias < 1:
        raise ConfigError(f"bias must be in [0, 1), got {bias!r}")
    if lesion and not (lesion_radius_mm > 0 and np.isfinite(lesion_radius_mm)):
        raise ConfigError(f"lesion_radius_mm must be a positive number, got {lesion_radius_mm!r}")
    rng_anatomy, rng_lesion, rng_noise = _streams(seed)
    g = _grid(dims)
    s = rng_anatomy.uniform(0.93, 1.0)
    semi = np.array([0.78, 0.9, 0.85]) * s
    rel = np.zeros(dims, dtype=np.float32)
    layers = ((1.0, 0.9), (0.94, 0.1), (0.88, 0.25), (0.85, 0.55), (0.72, 0.8))  # (scale, signal)
    for fraction, signal in layers:
        rel[_ellipsoid(g, (0, 0, 0), semi * fraction)] = signal
    for side in (-1.0, 1.0):
        rel[_ellipsoid(g, (side * 0.12 * s, 0.05, 0.1), (0.07 * s, 0.3 * s, 0.2 * s))] = 0.25

    mask = np.zeros(dims, dtype=bool)
    if lesion:
        white = rel == np.float32(0.8)
        mask = _lesion_mask(white, lesion_center, lesion_radius_mm, sp, rng_lesion)
        rel[mask] += np.float32(lesion_contrast)

    rel = ndimage.gaussian_filter(rel, 0.6)
    coeffs = rng_anatomy.uniform(-1.0, 1.0, size=4)
    field = coeffs[0] * g.u + coeffs[1] * g.v + coeffs[2] * g.w + coeffs[3] * (g.u**2 + g.v**2 - 0.5)
    field = 1.0 + bias * field / max(float(np.abs(coeffs).sum()), 1e-6)
    signal = rel * field.astype(np.float32) * np.float32(scale)
    if noise:
        sigma = np.float32(noise * scale)
        real = signal + rng_noise.standard_normal(dims, dtype=np.float32) * sigma
        imag = rng_noise.standard_normal(dims, dtype=np.float32) * sigma
        signal = np.sqrt(real * real + imag * imag)
    signal = signal.astype(np.float32, copy=False)
    return (signal, mask) if return_mask else signal
