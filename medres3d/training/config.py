"""The training configuration: a validated YAML schema for ``medres3d train CONFIG.yaml``.

Every section forbids unknown keys, so a typo (``optimzer: sgd``) is an error naming the key
and its path instead of a silently ignored option. Relative paths (``data.manifest``,
``output_dir``) are relative to the folder of the config file. The schema reference is
``docs/training.md``; ``sample_configs/`` holds worked examples.

Example:
    >>> from medres3d.training.config import load_config
    >>> cfg = load_config("sample_configs/tiny.yaml")    # doctest: +SKIP
    >>> cfg.training.epochs, cfg.model.builder_options()["stack_depth"]   # doctest: +SKIP
    (2, [1, 1])
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from medres3d.errors import ConfigError
from medres3d.models.options import BOTTLENECK_TYPES, NORMALIZATIONS, POOLING_TYPES, RESIDUAL_BLOCK_TYPES
from medres3d.transforms import PreprocessingSpec

# The builder's own option tuples, so that a config accepts exactly what resnet3d() does.
PoolingType = Literal[POOLING_TYPES]  # type: ignore[valid-type]
ResidualBlockType = Literal[RESIDUAL_BLOCK_TYPES]  # type: ignore[valid-type]
BottleneckType = Literal[BOTTLENECK_TYPES]  # type: ignore[valid-type]
Normalization = Literal[NORMALIZATIONS]  # type: ignore[valid-type]
MonitorMetric = Literal["val_loss", "val_accuracy", "val_balanced_accuracy", "val_auc"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """Where the labelled scans are and how they are split and cached."""

    manifest: Path = Field(description="CSV with columns path,label[,split]; paths relative to the CSV")
    class_names: list[str] | None = Field(
        None, description="output order of the classes; default: the sorted distinct labels")
    val_fraction: float = Field(
        0.2, ge=0.0, lt=1.0,
        description="fraction of rows held out (stratified) when the manifest has no split column")
    cache: Literal["memory", "disk", "none"] = Field(
        "memory", description="keep preprocessed volumes in memory, on disk (output_dir/cache), or not")
    num_workers: int = Field(0, ge=0, description="data-loading worker processes")
    channels: list[str] | None = Field(
        None, description="multi-sequence inputs: the manifest columns holding each channel's file, in "
                          "channel order (e.g. [path_t1, path_t2, path_flair]) instead of 'path'")

    @field_validator("channels")
    @classmethod
    def _channel_columns(cls, columns: list[str] | None) -> list[str] | None:
        if columns is not None:
            folded = [c.strip().casefold() for c in columns]
            if not columns or len(set(folded)) != len(folded) or not all(folded):
                raise ValueError(f"must be distinct non-empty column names, got {columns}")
            reserved = sorted(set(folded) & {"label", "split", "group"})
            if reserved:
                raise ValueError(f"{reserved} name other manifest columns, not channels")
            return folded
        return columns

    @field_validator("class_names")
    @classmethod
    def _distinct(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            if len(names) < 2:
                raise ValueError(f"at least 2 class names are needed, got {names}")
            if len(set(names)) != len(names) or not all(names):
                raise ValueError(f"class names must be distinct and non-empty, got {names}")
        return names


class PreprocessingConfig(_Section):
    """A preprocessing preset and overrides of its fields (see docs/preprocessing.md)."""

    preset: Literal["ct", "mri"] = "ct"
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("overrides")
    @classmethod
    def _known_fields(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        # A typo here would otherwise surface only when the trainer builds the spec, without the
        # file name; reported like an unknown key of any other section (see _describe).
        # channels come from data.channels, never from an override
        valid = [f.name for f in dataclasses.fields(PreprocessingSpec) if f.name != "channels"]
        unknown = [key for key in overrides if key not in valid]
        if unknown:
            raise PydanticCustomError("unknown_override", "unknown preprocessing field(s) {keys}",
                                      {"keys": unknown, "valid": valid})
        return overrides


FINE_TUNING_KEYS = ("init_from", "init_normalization", "freeze")


class ModelConfig(_Section):
    """The network: every option of the builder (MATLAB ``resnet3dLayers``); unset means MATLAB's default.

    ``num_classes`` is not set here: it is the number of class names.
    """

    input_size: list[int] = Field(description="[h, w, d] (one channel) or [h, w, d, c]")
    initial_filter_size: int | list[int] | None = None
    initial_num_filters: int | None = None
    initial_stride: int | list[int] | None = None
    initial_pooling: PoolingType | None = None
    residual_block_type: ResidualBlockType | None = None
    bottleneck_type: BottleneckType | None = None
    stack_depth: list[int] | None = None
    num_filters: list[int] | None = None
    normalization: Normalization | None = None
    init_from: Path | None = Field(
        None, description="fine-tuning: a model file whose layers matching by name and shape are loaded")
    init_normalization: Literal["keep", "refit"] = Field(
        "keep", description="with init_from: keep the source's input statistics, or fit them on this data")
    freeze: Literal["stem"] | int | None = Field(
        None, description="with init_from: freeze the stem ('stem') or the stem and the first N stacks")

    @field_validator("freeze")
    @classmethod
    def _freeze(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError(f"must be 'stem' or a number of stacks >= 1, got {value!r}")
        return value

    @field_validator("input_size")
    @classmethod
    def _size(cls, size: list[int]) -> list[int]:
        if len(size) not in (3, 4) or any(s < 1 for s in size):
            raise ValueError(f"must be 3 or 4 positive integers [h, w, d(, c)], got {size}")
        return size

    @property
    def spatial_size(self) -> tuple[int, int, int]:
        return tuple(self.input_size[:3])  # type: ignore[return-value]

    @property
    def in_channels(self) -> int:
        return self.input_size[3] if len(self.input_size) == 4 else 1

    def builder_options(self) -> dict[str, Any]:
        """The options that were set, as keyword arguments of ``resnet3d(input_size, num_classes, ...)``."""
        return self.model_dump(exclude={"input_size", *FINE_TUNING_KEYS}, exclude_none=True)

    def fine_tuning(self) -> dict[str, Any]:
        """The fine-tuning keys (``init_from``, ``init_normalization``, ``freeze``), not builder options."""
        return {key: getattr(self, key) for key in FINE_TUNING_KEYS}


class FlipConfig(_Section):
    prob: float = Field(0.0, ge=0.0, le=1.0, description="probability of flipping each listed axis")
    axes: list[Literal[0, 1, 2]] = Field(default_factory=lambda: [0, 1, 2],
                                         description="spatial axes (0=h, 1=w, 2=d)")


class AffineConfig(_Section):
    prob: float = Field(0.0, ge=0.0, le=1.0)
    rotate_deg: float = Field(10.0, ge=0.0, le=45.0, description="max rotation about each axis")
    scale: float = Field(0.1, ge=0.0, lt=0.5, description="max relative zoom in or out")


class NoiseConfig(_Section):
    prob: float = Field(0.0, ge=0.0, le=1.0)
    std: float = Field(0.05, ge=0.0, description="Gaussian noise std, in preprocessed intensity units")


class ShiftConfig(_Section):
    prob: float = Field(0.0, ge=0.0, le=1.0)
    offset: float = Field(0.1, ge=0.0, description="max intensity shift, in preprocessed intensity units")


class AugmentationConfig(_Section):
    """Random augmentations of the training windows (MONAI transforms); all off by default."""

    flip: FlipConfig = Field(default_factory=FlipConfig)
    affine: AffineConfig = Field(default_factory=AffineConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    shift: ShiftConfig = Field(default_factory=ShiftConfig)


class EarlyStoppingConfig(_Section):
    patience: int | None = Field(None, ge=1, description="epochs without improvement before stopping")
    metric: MonitorMetric = "val_loss"
    min_delta: float = Field(0.0, ge=0.0)


class TrainingConfig(_Section):
    """The optimization."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(4, ge=1, description="per process (per GPU under torchrun)")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD only")
    schedule: Literal["cosine", "step", "none"] = "cosine"
    step_size: int = Field(10, ge=1, description="epochs between decays (step schedule)")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="decay factor (step schedule)")
    class_weights: str | list[float] | None = Field(
        None, description="'auto': inverse class frequency of the training split; a list: one per class")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="fp16 needs CUDA")
    grad_clip: float | None = Field(None, gt=0.0, description="max global gradient norm")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    output_network: Literal["best", "last"] = Field(
        "best", description="weights saved: best validation metric (early_stopping.metric) or last epoch")
    seed: int = 0
    deterministic: bool = True
    population_bn_stats: bool = Field(
        False, description="after training, re-estimate BatchNorm statistics over the training data")
    patches: bool = Field(False, description="train on random windows of the input size")
    calibration: Literal["auto", "temperature", "none"] = Field(
        "auto", description="temperature scaling fitted on the validation split after training, stored in "
                            "the model file: 'auto' keeps it only if it lowers the validation NLL")
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    pretrained_lr_factor: float = Field(
        1.0, gt=0.0, le=1.0, description="with model.init_from: the loaded layers' learning rate is lr "
                                         "times this (the new layers train at lr)")

    @field_validator("class_weights")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("auto", "none"):
            raise ValueError(f"must be 'auto', 'none' or a list of positive weights, got {value!r}")
        if value == "none":
            return None
        if isinstance(value, list) and any(w <= 0 for w in value):
            raise ValueError(f"class weights must be positive, got {value}")
        return value


class CrossValidationConfig(_Section):
    """Stratified, grouped K-fold cross-validation (``medres3d train CONFIG --folds K`` sets ``folds``)."""

    folds: int | None = Field(None, ge=2, description="number of folds; null: one training run, no folds")
    resamples: int = Field(2000, ge=1, description="bootstrap resamples of the pooled out-of-fold metrics")


class TrainConfig(_Section):
    """A whole training run. Build it with :func:`load_config` or :meth:`from_dict`.

    Example:
        >>> cfg = TrainConfig.from_dict({"data": {"manifest": "m.csv"},
        ...                              "model": {"input_size": [32, 32, 16]}}, base_dir="/data")
        >>> str(cfg.data.manifest)
        '/data/m.csv'
    """

    data: DataConfig
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    model: ModelConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output_dir: Path = Field(Path("runs/train"), description="run folder (relative to the config file)")
    cross_validation: CrossValidationConfig = Field(default_factory=CrossValidationConfig)
    logging: Literal["csv", "tensorboard"] = Field(
        "csv", description="metrics.csv always; 'tensorboard' also writes them as TensorBoard events "
                           "(output_dir/tensorboard; pip install 'medres3d[tensorboard]')")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.model.init_from is None and (self.model.freeze is not None
                                             or self.training.pretrained_lr_factor != 1.0):
            raise ValueError("model.freeze and training.pretrained_lr_factor need model.init_from (the "
                             "model file to fine-tune)")
        names, weights = self.data.class_names, self.training.class_weights
        if names is not None and isinstance(weights, list) and len(weights) != len(names):
            raise ValueError(f"training.class_weights has {len(weights)} entries but data.class_names "
                             f"has {len(names)}")
        channels = self.data.channels
        if channels is not None and len(channels) != self.model.in_channels:
            raise ValueError(f"data.channels names {len(channels)} channel(s) {channels} but "
                             f"model.input_size {self.model.input_size} has {self.model.in_channels}: "
                             f"set input_size to [h, w, d, {len(channels)}]")
        return self

    @classmethod
    def from_dict(cls, data: Any, *, base_dir: str | os.PathLike[str] | None = None,
                  source: str = "config") -> TrainConfig:
        """Validate a mapping; relative paths become relative to ``base_dir`` (default: cwd).

        Raises:
            ConfigError: naming ``source``, the key path and what is wrong, for every error.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections, got "
                              f"{type(data).__name__}")
        try:
            config = cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(f"{source}: " + _describe(err)) from err
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        config.data.manifest = (base / config.data.manifest).resolve()
        config.output_dir = (base / config.output_dir).resolve()
        if config.model.init_from is not None:
            config.model.init_from = (base / config.model.init_from).resolve()
        return config

    def to_yaml(self) -> str:
        """The configuration with every default filled in, as YAML (the run's ``config.yaml``)."""
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read and validate a YAML training config.

    Raises:
        ConfigError: the file is missing, not YAML, or not a valid config (the message names the
            file, the key path such as ``training.optimizer``, and what is valid).

    Example:
        >>> load_config("sample_configs/tiny.yaml").training.batch_size   # doctest: +SKIP
        4
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return TrainConfig.from_dict(data, base_dir=path.resolve().parent, source=str(path))


def _describe(err: ValidationError) -> str:
    """One line per problem: ``key.path: message``, with the valid keys for an unknown key."""
    lines = []
    for problem in err.errors():
        loc = ".".join(str(p) for p in problem["loc"])
        if problem["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key{_valid_keys_hint(problem['loc'])}")
        elif problem["type"] == "unknown_override":
            valid = problem["ctx"]["valid"]
            lines.extend(f"{loc}.{key}: unknown key{_suggestion(str(key), valid)}"
                         for key in problem["ctx"]["keys"])
        elif problem["type"] == "missing":
            lines.append(f"{loc}: required key is missing")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {message} (got {problem.get('input')!r})")
    return "; ".join(dict.fromkeys(lines))


def _valid_keys_hint(loc: tuple[Any, ...]) -> str:
    section: type[BaseModel] = TrainConfig
    for part in loc[:-1]:
        field = section.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        section = annotation
    return _suggestion(str(loc[-1]), list(section.model_fields))


def _suggestion(key: str, valid: list[str]) -> str:
    """`` (valid keys: a, b); did you mean 'a'?`` (the question only when a key is close)."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f" (valid keys: {', '.join(valid)}){hint}"
