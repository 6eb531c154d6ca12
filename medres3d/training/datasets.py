"""The MONAI datasets of training: manifest rows loaded, preprocessed, cached, randomly cropped.

Each scan is loaded with the model's :class:`~medres3d.transforms.PreprocessingSpec` (the same
code inference uses); volumes smaller than the network input are padded with the spec's
``background_value`` (MONAI's symmetric padding, the geometry of sliding-window inference), and
the result is cached (memory: MONAI ``CacheDataset``; disk: ``PersistentDataset``), so only the
random part (patch cropping, augmentation) runs again in later epochs.

Example:
    >>> prepare = prepare_transform(spec, (64, 64, 32))                           # doctest: +SKIP
    >>> train = cached_dataset(items_of(rows, names, stamps), prepare, "memory", None)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandShiftIntensityd,
    RandSpatialCropd,
    SpatialPadd,
    Transform,
)

from medres3d.errors import ConfigError, MedRes3DError
from medres3d.training.manifest import ManifestRow

if TYPE_CHECKING:
    from medres3d.training.config import AugmentationConfig
    from medres3d.transforms import PreprocessingSpec


def items_of(rows: Sequence[ManifestRow], class_names: Sequence[str], stamps: Mapping[int, str]
             ) -> list[dict[str, Any]]:
    """MONAI data dicts: ``image`` (path; a list of paths for a multi-sequence row), ``label``
    (class index), ``row``, ``stamp``.

    The stamp is part of each item so a disk cache entry is invalidated when its scan changes.
    """
    index = {name: i for i, name in enumerate(class_names)}
    return [{"image": [str(p) for p in r.channels] if r.channels else str(r.path), "label": index[r.label],
             "row": r.row, "stamp": stamps[r.row]} for r in rows]


class LoadPreprocessd(Transform):
    """Load ``data["image"]`` with medres3d.io and preprocess it with a spec (deterministic, cacheable).

    A list of paths is one multi-sequence scan (:func:`medres3d.io.channels.load_scan`, the
    loading inference uses), its channels named by ``spec.channels``.

    A scan that fails to load does not raise: the item comes back without an image and with
    ``error`` set, so one pass can report every bad row of the manifest at once.

    Example:
        >>> item = LoadPreprocessd(PreprocessingSpec.preset("ct"))({"image": "scan.nii.gz"})  # doctest: +SKIP
        >>> item["image"].shape                                                              # doctest: +SKIP
        torch.Size([1, 160, 160, 96])
    """

    def __init__(self, spec: PreprocessingSpec) -> None:
        self.spec = spec

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medres3d.io.channels import load_scan
        from medres3d.transforms import preprocess

        out = dict(data)
        try:
            out["image"] = preprocess(load_scan(data["image"], self.spec.channels), self.spec)
        except MedRes3DError as err:
            out.pop("image")
            out["error"] = str(err)
        return out


def prepare_transform(spec: PreprocessingSpec, input_size: Sequence[int]) -> Any:
    """The deterministic (cacheable) part: load, preprocess, pad to at least the input size."""
    return Compose([
        LoadPreprocessd(spec),
        SpatialPadd("image", spatial_size=tuple(input_size), method="symmetric", mode="constant",
                    value=float(spec.background_value), allow_missing_keys=True),
        _plain_tensor(),
    ])


def _plain_tensor() -> EnsureTyped:
    # Training needs no metadata; MetaTensor's per-operation bookkeeping slowed small 3D batches ~2x.
    return EnsureTyped("image", data_type="tensor", track_meta=False, allow_missing_keys=True)


def random_transform(input_size: Sequence[int], *, patches: bool,
                     augmentation: AugmentationConfig | None) -> Any | None:
    """The random part, run every epoch: a window of the input size (patches) and augmentations."""
    steps: list[Any] = []
    if patches:
        steps.append(RandSpatialCropd("image", roi_size=tuple(input_size), random_size=False))
    aug = augmentation
    if aug is not None:
        if aug.flip.prob > 0:
            steps.extend(RandFlipd("image", prob=aug.flip.prob, spatial_axis=axis) for axis in aug.flip.axes)
        if aug.affine.prob > 0:
            # "border" repeats edge voxels: no artificial zeros in intensity-scaled images
            steps.append(RandAffined("image", prob=aug.affine.prob,
                                     rotate_range=(float(np.deg2rad(aug.affine.rotate_deg)),) * 3,
                                     scale_range=(aug.affine.scale,) * 3, mode="bilinear",
                                     padding_mode="border"))
        if aug.noise.prob > 0:
            steps.append(RandGaussianNoised("image", prob=aug.noise.prob, std=aug.noise.std))
        if aug.shift.prob > 0:
            steps.append(RandShiftIntensityd("image", offsets=aug.shift.offset, prob=aug.shift.prob))
    return Compose([*steps, _plain_tensor()]) if steps else None


def cached_dataset(items: Sequence[dict[str, Any]], prepare: Any, cache: str,
                   cache_dir: str | os.PathLike[str] | None, num_workers: int = 0) -> Dataset:
    """Items with the deterministic part applied and kept per ``cache`` ("memory", "disk", "none")."""
    if cache == "memory":
        return CacheDataset(list(items), prepare, num_workers=max(num_workers, 1), progress=False,
                            copy_cache=False)
    if cache == "disk":
        if cache_dir is None:
            raise ConfigError("cache 'disk' needs a cache folder")
        return PersistentDataset(list(items), prepare, cache_dir=cache_dir)
    if cache == "none":
        return Dataset(list(items), prepare)
    raise ConfigError(f"cache must be 'memory', 'disk' or 'none', got {cache!r}")


def with_random(base: Dataset, transform: Any | None) -> Dataset:
    """``base`` with the random part applied on every access (``base`` itself when there is none)."""
    return base if transform is None else Dataset(base, transform)


def cache_key(spec: PreprocessingSpec, input_size: Sequence[int]) -> str:
    """A folder name that changes with anything that changes the cached volumes."""
    text = json.dumps({"spec": spec.to_dict(), "input_size": list(input_size)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
