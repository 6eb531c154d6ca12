"""Preparing a Volume for the network: a serializable `PreprocessingSpec` and its MONAI pipeline.

The spec says everything a model needs its input to look like; it is saved in the model file,
so inference prepares scans exactly as training did. The pipeline, in order:

1. ``orientation``: reorder/flip the voxel axes to the closest to these axis codes (MONAI
   ``Orientation``; no interpolation);
2. ``spacing``: resample to this voxel size in mm (MONAI ``Spacing``, ``interpolation``);
3. ``intensity``: ``"ct-window"`` clips HU to ``window`` and maps it linearly to
   ``output_range`` (MONAI ``ScaleIntensityRange``); ``"zscore-foreground"`` subtracts the mean
   and divides by the standard deviation of the foreground voxels (``> foreground_threshold``),
   per channel, and sets the background to ``background_value``; ``"none"`` keeps the values;
4. ``spatial_size``: the network's input size, matched as ``size_mode`` says: ``"window"``
   (default) and ``"crop-or-pad"`` centre crop/pad to it, padding with ``background_value``
   (MONAI ``ResizeWithPadOrCrop``); ``"resize"`` resamples the whole scan to it (MONAI
   ``Resize``, trilinear).

``size_mode`` also says what inference does with a scan of another size (docs/inference.md):
``"window"`` crops only to give training batches one shape, so at inference a larger scan is
classified window by window over the whole of it and a smaller one is padded; ``"crop-or-pad"``
and ``"resize"`` are deliberate choices of the model, applied at inference too and reported
there.

Presets (see docs/preprocessing.md): ``"ct"``: RAS, 1.5 mm isotropic, window -1000..1000 HU
to 0..1 (air is 0 = ``background_value``); ``"mri"``: RAS, 1 mm isotropic, foreground z-score,
background 0.

Example:
    >>> from medres3d.transforms import PreprocessingSpec
    >>> spec = PreprocessingSpec.preset("ct", spacing=(2.0, 2.0, 2.0), spatial_size=(96, 96, 64))
    >>> spec.window, spec.background_value
    ((-1000.0, 1000.0), 0.0)
    >>> PreprocessingSpec.from_dict(spec.to_dict()) == spec
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medres3d._checks import check_choice
from medres3d.errors import ConfigError

if TYPE_CHECKING:
    from monai.data import MetaTensor
    from monai.transforms import Compose

    from medres3d.io.volume import Volume

INTENSITY_MODES: tuple[str, ...] = ("ct-window", "zscore-foreground", "none")
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "nearest")
SIZE_MODES: tuple[str, ...] = ("window", "crop-or-pad", "resize")
_AXIS_PAIRS = ("LR", "PA", "IS")


@dataclass(frozen=True)
class PreprocessingSpec:
    """How a volume is prepared for a network (orientation, spacing, intensity, size).

    Attributes:
        orientation: target axis codes, e.g. ``"RAS"`` (one letter of each of L/R, P/A, I/S);
            None keeps the scan's own axis order.
        spacing: target voxel size in mm along the three axes (after reorientation); None keeps it.
        interpolation: resampling of voxel values, ``"bilinear"`` or ``"nearest"``.
        intensity: ``"ct-window"``, ``"zscore-foreground"`` or ``"none"``.
        window: ``(low, high)`` HU for ``"ct-window"`` (values outside are clipped).
        output_range: what ``window`` maps to for ``"ct-window"``, ``(low, high)``.
        foreground_threshold: for ``"zscore-foreground"``: voxels above it are foreground.
        spatial_size: the network input ``(H, W, D)`` that ``size_mode`` matches scans to; None
            keeps the resampled size.
        size_mode: ``"window"`` (centre crop/pad for training batches only; inference windows
            over the whole scan), ``"crop-or-pad"`` (centre crop/pad, at inference too) or
            ``"resize"`` (the whole scan resampled to ``spatial_size``, at inference too).
        background_value: the value of "nothing" after the intensity step; padding uses it.
        channels: for a multi-sequence model, the name of each input channel in order (the
            manifest's channel columns, e.g. ``("path_t1", "path_t2")``): a scan is then one file
            per channel (:func:`medres3d.io.channels.load_channels`). None: one file per scan.
            Written by :meth:`to_dict` only when set, so older model files read unchanged.

    Example:
        >>> spec = PreprocessingSpec(intensity="ct-window", window=(-160, 240))
        >>> spec.to_dict()["window"]
        [-160.0, 240.0]
    """

    orientation: str | None = "RAS"
    spacing: tuple[float, float, float] | None = None
    interpolation: str = "bilinear"
    intensity: str = "none"
    window: tuple[float, float] | None = None
    output_range: tuple[float, float] = (0.0, 1.0)
    foreground_threshold: float = 0.0
    spatial_size: tuple[int, int, int] | None = None
    size_mode: str = "window"
    background_value: float = 0.0
    channels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen: normalized values are stored once, here
        set_field(self, "orientation", _orientation(self.orientation))
        set_field(self, "spacing", _floats3("spacing", self.spacing, positive=True))
        set_field(self, "interpolation", check_choice("interpolation", self.interpolation, INTERPOLATIONS))
        set_field(self, "intensity", check_choice("intensity", self.intensity, INTENSITY_MODES))
        set_field(self, "window", _range("window", self.window))
        set_field(self, "output_range", _range("output_range", self.output_range, allow_none=False))
        set_field(self, "foreground_threshold", _finite("foreground_threshold", self.foreground_threshold))
        set_field(self, "spatial_size", _ints3("spatial_size", self.spatial_size))
        set_field(self, "size_mode", check_choice("size_mode", self.size_mode, SIZE_MODES))
        set_field(self, "background_value", _finite("background_value", self.background_value))
        set_field(self, "channels", _channel_names(self.channels))
        if self.intensity == "ct-window" and self.window is None:
            raise ConfigError("intensity='ct-window' needs window=(low, high) in HU, got window=None")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PreprocessingSpec:
        """The ``"ct"`` or ``"mri"`` preset with some fields replaced.

        Example:
            >>> PreprocessingSpec.preset("mri", spacing=None).intensity
            'zscore-foreground'
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown preprocessing preset {name!r}; valid presets: {sorted(PRESETS)}")
        fields = {**PRESETS[name], **overrides}
        if name == "ct" and "output_range" in overrides and "background_value" not in overrides:
            # Air is the window's low end: padding must stay air when the output range moves.
            fields["background_value"] = fields["output_range"][0]
        return cls.from_dict(fields)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessingSpec:
        """Build a spec from ``to_dict()``'s output (or a subset of it; missing fields take defaults).

        Raises:
            ConfigError: an unknown field, or an invalid value (the message names the field).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a preprocessing spec must be a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown preprocessing field(s) {unknown}; valid fields: {names}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (lists, floats, strings, None) that :meth:`from_dict` reads back."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        if self.channels is None:  # single-file specs keep the dict (and cache keys) of older versions
            del data["channels"]
        return data


PRESETS: dict[str, dict[str, Any]] = {
    # -1000..1000 HU keeps air, lung, fat, soft tissue and most bone apart; air maps to 0
    "ct": {
        "orientation": "RAS",
        "spacing": (1.5, 1.5, 1.5),
        "interpolation": "bilinear",
        "intensity": "ct-window",
        "window": (-1000.0, 1000.0),
        "output_range": (0.0, 1.0),
        "background_value": 0.0,
    },
    # MRI intensities have no absolute scale: standardize each scan over its foreground
    "mri": {
        "orientation": "RAS",
        "spacing": (1.0, 1.0, 1.0),
        "interpolation": "bilinear",
        "intensity": "zscore-foreground",
        "foreground_threshold": 0.0,
        "background_value": 0.0,
    },
}


def build_transforms(spec: PreprocessingSpec) -> Compose:
    """The MONAI pipeline of ``spec``, for channel-first MetaTensors ``(C, H, W, D)``.

    Example:
        >>> pipeline = build_transforms(PreprocessingSpec.preset("ct"))
        >>> [type(t).__name__ for t in pipeline.transforms]
        ['EnsureType', 'Orientation', 'Spacing', 'ScaleIntensityRange', 'EnsureType']
    """
    import torch
    from monai.transforms import (
        Compose,
        EnsureType,
        Orientation,
        ScaleIntensityRange,
        Spacing,
    )

    steps: list[Any] = [EnsureType(data_type="tensor", dtype=torch.float32, track_meta=True)]
    if spec.orientation is not None:
        steps.append(Orientation(axcodes=spec.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if spec.spacing is not None:
        # float32 resampling: float64 (MONAI's default) doubles memory for no visible gain
        steps.append(
            Spacing(pixdim=spec.spacing, mode=spec.interpolation, padding_mode="border", dtype=torch.float32)
        )
    if spec.intensity == "ct-window":
        low, high = spec.window
        steps.append(
            ScaleIntensityRange(
                a_min=low, a_max=high, b_min=spec.output_range[0], b_max=spec.output_range[1], clip=True
            )
        )
    elif spec.intensity == "zscore-foreground":
        steps.append(ForegroundZScore(spec.foreground_threshold, spec.background_value))
    size_step = size_transform(spec)
    if size_step is not None:
        steps.append(size_step)
    steps.append(EnsureType(data_type="tensor", dtype=torch.float32, track_meta=True))
    return Compose(steps)


def size_transform(spec: PreprocessingSpec) -> Any | None:
    """The MONAI transform of the size step of ``spec`` (None without ``spatial_size``).

    Example:
        >>> type(size_transform(PreprocessingSpec(spatial_size=(8, 8, 8), size_mode="resize"))).__name__
        'Resize'
    """
    from monai.transforms import Resize, ResizeWithPadOrCrop

    if spec.spatial_size is None:
        return None
    if spec.size_mode == "resize":
        return Resize(spatial_size=spec.spatial_size, mode="trilinear", anti_aliasing=False)
    return ResizeWithPadOrCrop(spatial_size=spec.spatial_size, mode="constant", value=spec.background_value)


def preprocess(volume: Volume | MetaTensor, spec: PreprocessingSpec) -> MetaTensor:
    """Apply ``spec`` to a Volume (or a channel-first MetaTensor with its affine).

    Returns:
        A float32 MetaTensor ``(C, H, W, D)`` whose ``.affine`` is the RAS affine of the
        preprocessed grid (voxel index to world mm).

    Example:
        >>> import numpy as np
        >>> from medres3d.io.volume import Volume
        >>> vol = Volume(np.full((1, 8, 8, 4), -1000.0, np.float32), np.diag([-2, -2, 3, 1.0]))
        >>> out = preprocess(vol, PreprocessingSpec.preset("ct", spacing=(2.0, 2.0, 3.0)))
        >>> tuple(out.shape), float(out.max()), out.affine.diagonal().tolist()
        ((1, 8, 8, 4), 0.0, [2.0, 2.0, 3.0, 1.0])
    """
    from monai.data import MetaTensor

    from medres3d.io.volume import Volume

    if isinstance(volume, Volume):
        tensor = volume.to_metatensor()
    elif isinstance(volume, MetaTensor):
        tensor = volume
    else:
        raise ConfigError(f"preprocess needs a Volume or a MetaTensor, got {type(volume).__name__}")
    if tensor.ndim != 4:
        raise ConfigError(f"preprocess needs a (C, H, W, D) input, got shape {tuple(tensor.shape)}")
    return build_transforms(spec)(tensor)


class ForegroundZScore:
    """Per channel: ``(x - mean) / std`` over the voxels ``> threshold``; the rest set to ``background``.

    A channel whose foreground is empty becomes all ``background``; a constant foreground is
    only shifted (std taken as 1, as MONAI's ``NormalizeIntensity`` does). Statistics are
    computed in float64.

    Example:
        >>> import torch
        >>> ForegroundZScore(0.0, 0.0)(torch.tensor([[[[0.0, 1.0, 3.0]]]])).tolist()
        [[[[0.0, -1.0, 1.0]]]]
    """

    def __init__(self, threshold: float = 0.0, background: float = 0.0) -> None:
        self.threshold = float(threshold)
        self.background = float(background)

    def __call__(self, img):
        import torch

        out = img.clone()
        for channel in range(out.shape[0]):
            values = out[channel]
            mask = values > self.threshold
            foreground = values[mask].to(torch.float64)
            if foreground.numel() == 0:
                values.fill_(self.background)
                continue
            mean = foreground.mean()
            std = foreground.std(correction=0)
            std = std if std > 0 else torch.ones_like(std)
            normalized = ((values.to(torch.float64) - mean) / std).to(values.dtype)
            values.copy_(torch.where(mask, normalized, torch.full_like(values, self.background)))
        return out


# -- validation helpers: each names the field, the value, and what is valid --------------------


def _orientation(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 3:
        raise ConfigError(f"orientation must be 3 axis codes like 'RAS' or None, got {value!r}")
    code = value.upper()
    # index of the L/R, P/A or I/S pair each letter belongs to (-1: none); each pair exactly once
    pair_of = [next((i for i, pair in enumerate(_AXIS_PAIRS) if letter in pair), -1) for letter in code]
    if sorted(pair_of) != [0, 1, 2]:
        raise ConfigError(
            f"orientation {value!r} must hold one letter of each pair L/R, P/A, I/S (e.g. 'RAS', 'LPS')"
        )
    return code


def _channel_names(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"channels must be a non-empty list of channel names or None, got {value!r}")
    if not all(isinstance(v, str) and v for v in value) or len(set(value)) != len(value):
        raise ConfigError(f"channels must be distinct non-empty names, got {list(value)!r}")
    return tuple(value)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _sequence(name: str, value: Any, length: int) -> list[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != length:
        raise ConfigError(f"{name} must be a sequence of {length} numbers or None, got {value!r}")
    return list(value)


def _floats3(name: str, value: Any, positive: bool) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = (value, value, value)  # one number: isotropic
    numbers = tuple(_finite(name, v) for v in _sequence(name, value, 3))
    if positive and min(numbers) <= 0:
        raise ConfigError(f"{name} must be positive (mm), got {list(numbers)}")
    return numbers  # type: ignore[return-value]


def _ints3(name: str, value: Any) -> tuple[int, int, int] | None:
    if value is None:
        return None
    items = _sequence(name, value, 3)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ConfigError(f"{name} must be 3 positive integers or None, got {value!r}")
    return tuple(int(v) for v in items)  # type: ignore[return-value]


def _range(name: str, value: Any, allow_none: bool = True) -> tuple[float, float] | None:
    if value is None and allow_none:
        return None
    low, high = (_finite(name, v) for v in _sequence(name, value, 2))
    if not low < high:
        raise ConfigError(f"{name} must be (low, high) with low < high, got {value!r}")
    return (low, high)
