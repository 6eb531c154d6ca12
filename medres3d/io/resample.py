"""Resampling an array from one voxel grid onto another through world coordinates.

Example:
    >>> out = resample_to_grid(np.ones((1, 4, 4, 4)), np.eye(4), (8, 8, 8), np.diag([.5, .5, .5, 1]))
    >>> out.shape
    (1, 8, 8, 8)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medres3d.errors import ConfigError


def resample_to_grid(
    array: np.ndarray,
    affine: np.ndarray,
    shape: Sequence[int],
    target_affine: np.ndarray,
    *,
    order: int = 1,
    fill: float = 0.0,
    chunk_voxels: int = 4_000_000,
) -> np.ndarray:
    """Resample (K, X, Y, Z) ``array`` with ``affine`` onto a grid of ``shape`` with ``target_affine``.

    Works through world coordinates: target voxel -> world -> source voxel, interpolated with
    :func:`scipy.ndimage.map_coordinates`; target voxels farther than half a voxel outside the
    source grid get ``fill``. Processed in chunks of slices so memory stays bounded.

    Example:
        >>> out = resample_to_grid(np.ones((1, 4, 4, 4)), np.eye(4), (8, 8, 8), np.diag([.5, .5, .5, 1]))
        >>> out.shape, float(out[0, 4, 4, 4])
        ((1, 8, 8, 8), 1.0)
    """
    from scipy.ndimage import map_coordinates

    shape = tuple(int(s) for s in shape)
    if array.ndim != 4 or len(shape) != 3:
        raise ConfigError(f"expected a (K, X, Y, Z) array and a 3D shape, got {array.shape} and {shape}")
    source_from_target = np.linalg.inv(np.asarray(affine, np.float64)) @ np.asarray(target_affine, np.float64)
    out = np.full((array.shape[0], *shape), fill, dtype=np.float32)
    slices_per_chunk = max(1, chunk_voxels // max(shape[0] * shape[1], 1))
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for k0 in range(0, shape[2], slices_per_chunk):
        ks = np.arange(k0, min(k0 + slices_per_chunk, shape[2]))
        target = np.stack(
            [
                np.broadcast_to(ii[..., None], (*ii.shape, ks.size)),
                np.broadcast_to(jj[..., None], (*jj.shape, ks.size)),
                np.broadcast_to(ks, (*ii.shape, ks.size)),
            ]
        ).reshape(3, -1)
        source = source_from_target[:3, :3] @ target + source_from_target[:3, 3:4]
        inside = np.all((source >= -0.5) & (source <= np.array(array.shape[1:])[:, None] - 0.5), axis=0)
        for channel in range(array.shape[0]):
            values = map_coordinates(array[channel], source, order=order, mode="nearest")
            block = np.where(inside, values, fill).reshape(shape[0], shape[1], ks.size)
            out[channel, :, :, ks[0] : ks[-1] + 1] = block
    return out
