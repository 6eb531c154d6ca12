"""Several files of one scan (MRI sequences, CT phases) as the channels of one `Volume`.

T1, T2 and FLAIR of a study, or a CT and its contrast phase, are separate files, usually on
different grids. :func:`load_channels` loads each with :func:`~medres3d.io.readers.load_volume`,
resamples every channel after the first onto the first channel's grid through world space
(:func:`~medres3d.io.resample.resample_to_grid`, trilinear, 0 outside the channel's field of
view) and stacks them as channels ``(C, H, W, D)``. It runs before the model's preprocessing, so
orientation, spacing and the intensity step then act on each channel alike (the foreground
z-score per channel). Training (:class:`~medres3d.training.datasets.LoadPreprocessd`) and
inference (:func:`~medres3d.inference.prepare.prepare_scan`) both load scans through
:func:`load_scan`, so a multi-sequence scan is prepared the same way in both.

``meta["channels"]`` lists the channel names, ``meta["channel_sources"]`` the files and
``meta["resampled_channels"]`` the channels that were moved onto the first one's grid.

Example:
    >>> vol = load_channels(["t1.nii.gz", "t2.nii.gz", "flair.nii.gz"],
    ...                     names=["t1", "t2", "flair"])        # doctest: +SKIP
    >>> vol.num_channels, vol.meta["channels"]                  # doctest: +SKIP
    (3, ['t1', 't2', 'flair'])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from medres3d.errors import ConfigError, VolumeLoadError
from medres3d.io.volume import Volume

# below this share of the first channel's grid covered by another channel, a warning says so
_COVERAGE_WARNING = 0.95
# the coverage is measured on at most about this many voxel centres (a regular subsample)
_COVERAGE_SAMPLES = 200_000


def load_channels(
    paths: Sequence[str | os.PathLike[str]],
    names: Sequence[str] | None = None,
    **load_options: Any,
) -> Volume:
    """Load one file per channel and stack them, on the first channel's grid, as one Volume.

    Args:
        paths: one file (or DICOM folder) per channel, in channel order; each holds one 3D volume.
        names: one name per channel (e.g. the manifest columns ``path_t1, path_t2``); default
            ``channel_0, channel_1...``.
        load_options: passed to :func:`~medres3d.io.readers.load_volume` for every file.

    Returns:
        A float32 Volume ``(len(paths), H, W, D)`` on the first channel's grid and affine, with the
        first channel's modality and source, every channel's loader warnings (prefixed with its
        name) and ``meta["channels"]``, ``meta["channel_sources"]``, ``meta["resampled_channels"]``.

    Raises:
        ConfigError: no paths, or names that are not one distinct name per path.
        VolumeLoadError (or a subclass): a channel file is missing or unreadable, holds more than
            one volume, or does not overlap the first channel's field of view (the message starts
            with that file).

    Example:
        >>> import numpy as np, os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> t1, t2 = os.path.join(folder, "t1.nii.gz"), os.path.join(folder, "t2.nii.gz")
        >>> Volume(np.ones((1, 4, 4, 4), np.float32), np.eye(4)).to_nifti(t1)
        >>> Volume(np.full((1, 2, 2, 2), 5, np.float32), np.diag([2, 2, 2, 1.0])).to_nifti(t2)
        >>> vol = load_channels([t1, t2], names=["t1", "t2"])
        >>> vol.shape, vol.meta["channels"], vol.meta["resampled_channels"], float(vol.array[1].mean())
        ((2, 4, 4, 4), ['t1', 't2'], ['t2'], 5.0)
    """
    from medres3d.io.readers import load_volume

    paths = _check_paths(paths)
    names = _check_names(names, len(paths))
    load_options.setdefault("dtype", "float32")
    first = _single(load_volume(paths[0], **load_options), paths[0])
    arrays = [first.array[0].astype(np.float32, copy=False)]
    warnings = [f"{names[0]}: {w}" for w in first.warnings]
    resampled = []
    for path, name in zip(paths[1:], names[1:], strict=True):
        channel = _single(load_volume(path, **load_options), path)
        warnings += [f"{name}: {w}" for w in channel.warnings]
        same_grid = np.allclose(channel.affine, first.affine, atol=1e-4)
        if channel.spatial_shape == first.spatial_shape and same_grid:
            arrays.append(channel.array[0].astype(np.float32, copy=False))
            continue
        covered = coverage(channel.spatial_shape, channel.affine, first.spatial_shape, first.affine)
        if covered == 0.0:
            raise VolumeLoadError(
                path, f"channel {name!r} does not overlap the field of view of the first channel "
                      f"{names[0]!r} ({paths[0]}): no voxel of its grid lies inside this file's grid")
        if covered < _COVERAGE_WARNING:
            warnings.append(f"{name}: covers {covered:.0%} of the field of view of {names[0]!r}; "
                            "the rest of the channel is 0")
        from medres3d.io.resample import resample_to_grid

        array = resample_to_grid(channel.array.astype(np.float32, copy=False), channel.affine,
                                 first.spatial_shape, first.affine)
        arrays.append(array[0])
        resampled.append(name)
    meta = {**first.meta, "warnings": warnings, "channels": list(names),
            "channel_sources": [os.fspath(p) for p in paths], "resampled_channels": resampled}
    return Volume(np.stack(arrays), first.affine, modality=first.modality, meta=meta,
                  source=first.source if first.source is not None else os.fspath(paths[0]))


def load_scan(scan: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
              names: Sequence[str] | None = None, **load_options: Any) -> Volume:
    """One path with :func:`~medres3d.io.readers.load_volume`, a list or tuple of paths with
    :func:`load_channels` (``names`` checked against their number).

    Example:
        >>> load_scan(["t1.nii.gz", "t2.nii.gz"]).num_channels   # doctest: +SKIP
        2
    """
    from medres3d.io.readers import load_volume

    if isinstance(scan, (list, tuple)):
        return load_channels(scan, names, **load_options)
    return load_volume(scan, **load_options)


def coverage(shape: Sequence[int], affine: np.ndarray, target_shape: Sequence[int],
             target_affine: np.ndarray) -> float:
    """The share of the target grid's voxel centres that lie inside a grid (shape, affine).

    "Inside" is within half a voxel of the grid, as :func:`~medres3d.io.resample.resample_to_grid`
    interpolates there. Measured on a regular subsample of at most about 200 000 centres.

    Example:
        >>> coverage((4, 4, 4), np.eye(4), (8, 4, 4), np.eye(4))
        0.5
    """
    target_shape = [int(s) for s in target_shape]
    steps = max(1, round((np.prod(target_shape) / _COVERAGE_SAMPLES) ** (1 / 3)))
    axes = [np.arange(0, s, steps) for s in target_shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).astype(np.float64)
    source_from_target = np.linalg.inv(np.asarray(affine, np.float64)) @ np.asarray(target_affine, np.float64)
    source = source_from_target[:3, :3] @ grid + source_from_target[:3, 3:4]
    upper = np.asarray(shape, np.float64)[:, None] - 0.5
    inside = np.all((source >= -0.5) & (source <= upper), axis=0)
    return float(inside.mean())


def _check_paths(paths: Any) -> list[str | os.PathLike[str]]:
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Sequence):
        raise ConfigError(f"load_channels needs a list of paths (one per channel), got {paths!r}")
    if not paths:
        raise ConfigError("load_channels needs at least one path, got an empty list")
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"every channel must be a path, got {path!r} of type {type(path).__name__}")
    return list(paths)


def _check_names(names: Sequence[str] | None, count: int) -> list[str]:
    if names is None:
        return [f"channel_{i}" for i in range(count)]
    names = list(names)
    if len(names) != count:
        raise ConfigError(f"{count} channel file(s) given for {len(names)} channel name(s) {names}: "
                          "give one file per channel, in this order")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"channel names must be distinct non-empty strings, got {names}")
    return names


def _single(volume: Volume, path: str | os.PathLike[str]) -> Volume:
    if volume.num_channels != 1:
        raise VolumeLoadError(path, f"holds {volume.num_channels} volumes (shape {volume.shape}); a channel "
                                    "file of a multi-sequence scan must hold one 3D volume")
    return volume
