"""The builder's options (MATLAB ``resnet3dLayers`` name-value arguments) and their validation.

This module has no torch import: a configuration can be checked, printed and serialized
without loading the network code.

Example:
    >>> from medres3d.models.options import ResNet3DConfig
    >>> cfg = ResNet3DConfig.create((64, 64, 32), 2, stack_depth=(1, 1), num_filters=(8, 16))
    >>> cfg.input_size, cfg.initial_stride
    ((64, 64, 32, 1), (2, 2, 2))
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

from medres3d._checks import check_choice
from medres3d.errors import ConfigError

POOLING_TYPES = ("max", "average", "none")
RESIDUAL_BLOCK_TYPES = ("batchnorm-before-add", "batchnorm-after-add")
BOTTLENECK_TYPES = ("downsample-first-conv", "none")
NORMALIZATIONS = ("zerocenter", "zscore", "rescale-symmetric", "rescale-zero-one", "none")

# snake_case argument -> MATLAB name-value argument, used in docs and in "did you mean" hints.
MATLAB_NAMES = {
    "input_size": "inputSize",
    "num_classes": "numClasses",
    "initial_filter_size": "InitialFilterSize",
    "initial_num_filters": "InitialNumFilters",
    "initial_stride": "InitialStride",
    "initial_pooling": "InitialPoolingLayer",
    "residual_block_type": "ResidualBlockType",
    "bottleneck_type": "BottleneckType",
    "stack_depth": "StackDepth",
    "num_filters": "NumFilters",
    "normalization": "Normalization",
}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _int_vector(name: str, value: Any, lengths: tuple[int, ...], *, scalar_ok: bool) -> tuple[int, ...]:
    """A positive int (broadcast to a 3-vector when ``scalar_ok``) or a sequence of positive ints."""
    if scalar_ok and _is_int(value):
        return (_positive_int(name, value),) * 3
    if isinstance(value, (str, bytes)) or (not isinstance(value, Sequence) and not hasattr(value, "tolist")):
        raise ConfigError(f"{name} must be a sequence of positive integers, got {value!r}")
    items = list(value.tolist() if hasattr(value, "tolist") else value)
    if lengths and len(items) not in lengths:
        wanted = " or ".join(str(n) for n in lengths)
        raise ConfigError(f"{name} must have {wanted} elements, got {len(items)}: {value!r}")
    if not items:
        raise ConfigError(f"{name} must not be empty")
    if not all(_is_int(v) and v >= 1 for v in items):
        raise ConfigError(f"{name} must contain positive integers only, got {value!r}")
    return tuple(int(v) for v in items)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclasses.dataclass(frozen=True)
class ResNet3DConfig:
    """Every option of MATLAB's ``resnet3dLayers``, with MATLAB's defaults.

    Sizes and strides are in MATLAB order ``(h, w, d)``, which is also the order of the spatial
    axes of a ``(N, C, H, W, D)`` tensor. After validation ``input_size`` is always
    ``(h, w, d, c)`` and the scalar-or-vector options are 3-tuples. Build one with
    :meth:`create` (validates and normalizes) or :meth:`from_dict`.

    Example:
        >>> cfg = ResNet3DConfig.create((224, 224, 64, 3), 10)
        >>> cfg.stack_depth, cfg.num_filters
        ((3, 4, 6, 3), (64, 128, 256, 512))
    """

    input_size: tuple[int, int, int, int]
    num_classes: int
    initial_filter_size: tuple[int, int, int] = (7, 7, 7)
    initial_num_filters: int = 64
    initial_stride: tuple[int, int, int] = (2, 2, 2)
    initial_pooling: str = "max"
    residual_block_type: str = "batchnorm-before-add"
    bottleneck_type: str = "downsample-first-conv"
    stack_depth: tuple[int, ...] = (3, 4, 6, 3)
    num_filters: tuple[int, ...] = (64, 128, 256, 512)
    normalization: str = "zerocenter"

    def __post_init__(self) -> None:
        # Normalize in place (frozen dataclass) so that every instance is valid and canonical.
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        size = _int_vector("input_size", self.input_size, (3, 4), scalar_ok=False)
        fix("input_size", size if len(size) == 4 else (*size, 1))
        if not _is_int(self.num_classes) or self.num_classes < 2:
            raise ConfigError(f"num_classes must be an integer greater than 1, got {self.num_classes!r}")
        fix("num_classes", int(self.num_classes))
        fix("initial_filter_size", _int_vector("initial_filter_size", self.initial_filter_size, (3,),
                                               scalar_ok=True))
        fix("initial_num_filters", _positive_int("initial_num_filters", self.initial_num_filters))
        fix("initial_stride", _int_vector("initial_stride", self.initial_stride, (3,), scalar_ok=True))
        check_choice("initial_pooling", self.initial_pooling, POOLING_TYPES)
        check_choice("residual_block_type", self.residual_block_type, RESIDUAL_BLOCK_TYPES)
        check_choice("bottleneck_type", self.bottleneck_type, BOTTLENECK_TYPES)
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        fix("stack_depth", _int_vector("stack_depth", self.stack_depth, (), scalar_ok=False))
        fix("num_filters", _int_vector("num_filters", self.num_filters, (), scalar_ok=False))
        if len(self.stack_depth) != len(self.num_filters):
            raise ConfigError(
                f"stack_depth and num_filters must have the same length (one entry per stack), got "
                f"stack_depth={self.stack_depth} ({len(self.stack_depth)}) and "
                f"num_filters={self.num_filters} ({len(self.num_filters)})"
            )
        minimum = self.minimum_input_size
        for axis, value, low in zip("hwd", self.input_size[:3], minimum, strict=True):
            if value < low:
                raise ConfigError(
                    f"input_size {axis}={value} is too small: each of h, w, d must be at least "
                    f"initial_stride * pooling_stride * 2^(len(stack_depth) - 1) = {low} for this "
                    f"configuration (minimum {dict(zip('hwd', minimum, strict=True))})"
                )

    @classmethod
    def create(cls, input_size: Sequence[int], num_classes: int, **options: Any) -> ResNet3DConfig:
        """Validate ``options`` (snake_case MATLAB names) and build a config.

        Unknown option names raise :class:`~medres3d.errors.ConfigError` listing the valid ones
        (MATLAB spellings such as ``InitialNumFilters`` get a "did you mean" hint).
        """
        valid = [f.name for f in dataclasses.fields(cls)][2:]
        for name in options:
            if name not in valid:
                hint = difflib.get_close_matches(_snake(name), valid, n=1, cutoff=0.6)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigError(f"unknown option {name!r}; valid options: {', '.join(valid)}{extra}")
        return cls(tuple(input_size) if isinstance(input_size, Sequence) else input_size,
                   num_classes, **options)

    @property
    def in_channels(self) -> int:
        return self.input_size[3]

    @property
    def spatial_size(self) -> tuple[int, int, int]:
        return self.input_size[:3]  # type: ignore[return-value]

    @property
    def bottleneck(self) -> bool:
        return self.bottleneck_type == "downsample-first-conv"

    @property
    def minimum_input_size(self) -> tuple[int, int, int]:
        """Smallest h, w, d MATLAB accepts: initial_stride * pooling_stride * 2^(stacks - 1)."""
        pooling_stride = 1 if self.initial_pooling == "none" else 2
        factor = pooling_stride * 2 ** (len(self.stack_depth) - 1)
        return tuple(s * factor for s in self.initial_stride)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists for tuples); ``from_dict(to_dict())`` round-trips."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResNet3DConfig:
        """Inverse of :meth:`to_dict`; validates like :meth:`create`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a ResNet3D config must be a mapping, got {type(data).__name__}")
        missing = [k for k in ("input_size", "num_classes") if k not in data]
        if missing:
            raise ConfigError(f"ResNet3D config is missing {', '.join(missing)}")
        rest = {k: v for k, v in data.items() if k not in ("input_size", "num_classes")}
        return cls.create(data["input_size"], data["num_classes"], **rest)
