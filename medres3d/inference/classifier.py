"""The Classifier: a model file's network and preprocessing, ready to classify scans.

``Classifier.load`` reads a model file (refusing one whose input normalization was never fitted),
``predict`` loads a scan (path, :class:`~medres3d.io.volume.Volume` or array), applies the model
file's own preprocessing, classifies it window by window and returns a :class:`Prediction`.
``predict_many`` streams predictions for many scans while worker processes load and preprocess
the next ones; a scan that fails becomes a Prediction with ``status == "error"``.

Example:
    >>> clf = Classifier.load("model.safetensors", device="auto")       # doctest: +SKIP
    >>> p = clf.predict("scan.nii.gz")                                   # doctest: +SKIP
    >>> p.label, p.probabilities                                         # doctest: +SKIP
    ('lesion', {'normal': 0.08, 'lesion': 0.92})
    >>> for p in clf.predict_many(paths, workers=4): print(p.source, p.status)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from medres3d._checks import check_choice
from medres3d.errors import ConfigError
from medres3d.inference.aggregation import AGGREGATIONS, resolve_negative_class
from medres3d.inference.evidence import EvidenceMap, evidence_map
from medres3d.inference.loader_pool import loader_context, prefetch_prepared, validate_timeout
from medres3d.inference.prepare import FailedScan, PreparedScan, describe_error, prepare_or_fail, prepare_scan
from medres3d.inference.sliding_window import sliding_window_classify
from medres3d.runtime import resolve_device

if TYPE_CHECKING:
    from torch import nn

    from medres3d.transforms import PreprocessingSpec


@dataclass
class Prediction:
    """The result of classifying one scan.

    Attributes:
        label: the most probable class name (None when ``status == "error"``).
        probabilities: class name -> probability, in the model's class order.
        num_windows: number of windows the network saw.
        seconds: wall time for this scan (loading, preprocessing, inference).
        evidence: the overlap-averaged window probabilities in world space (None on error or when
            evidence was switched off); ``evidence.in_scan_grid()`` puts it on the scan's grid.
        warnings: anything suspicious met on the way (loader warnings, a crop, pad or resize,
            fallbacks).
        source: the scan's path, or None for an in-memory scan.
        status: ``"ok"`` or ``"error"``.
        error: on error, the reason (the exception's message, naming the file).
        meta: how the scan met the network: ``preprocessed_shape`` (after spacing and
            orientation), ``shape`` (what the windows covered), ``network_input`` and ``size_mode``
            (see :mod:`medres3d.inference.prepare`).
    """

    label: str | None
    probabilities: dict[str, float]
    num_windows: int
    seconds: float
    evidence: EvidenceMap | None = None
    warnings: list[str] = field(default_factory=list)
    source: str | None = None
    status: str = "ok"
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the scan was classified."""
        return self.status == "ok"


class Classifier:
    """A network, its class names and its preprocessing, on one device.

    Args:
        net: the network (a :class:`~medres3d.models.resnet3d.ResNet3D`).
        class_names: one name per output.
        preprocessing: the spec inputs are prepared with (None: voxels used as they are).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:K"``.
        overlap, batch_size, aggregate, weight_by_foreground, amp, channels_last: passed to
            :func:`~medres3d.inference.sliding_window.sliding_window_classify`.
        negative_class: for ``aggregate="any"`` only: the negative class, by name or index (see
            :func:`resolve_negative_class`); default the class named normal, negative, background or
            healthy, else class 0.
        evidence: compute an evidence map for every prediction.
        evidence_cell_size: evidence grid cell width in voxels (default: the window step).
        temperature: temperature scaling of every scan's probabilities (None: none; see
            :mod:`medres3d.inference.calibration`); ``Classifier.load`` takes it from the model
            file. The label never changes; ``Prediction.meta["uncalibrated"]`` keeps the raw ones.
        tta: test-time augmentation: ``"flip"`` (every flip of the 3 spatial axes, x8 compute),
            ``"flip:0"`` / ``"flip:0,1"`` (those axes, x2 / x4) or None; each window batch is
            classified flipped and its probabilities averaged (:mod:`medres3d.inference.tta`).

    Raises:
        NormalizationNotFittedError: the network's input normalization was never fitted.

    Example:
        >>> clf = Classifier(net, ["normal", "lesion"], PreprocessingSpec.preset("ct"))  # doctest: +SKIP
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        preprocessing: PreprocessingSpec | None = None,
        *,
        device: str | torch.device = "auto",
        overlap: float = 0.5,
        batch_size: int = 8,
        aggregate: str = "mean",
        negative_class: int | str | None = None,
        weight_by_foreground: bool = False,
        amp: bool | str | None = None,
        channels_last: bool = False,
        evidence: bool = True,
        evidence_cell_size: int | None = None,
        source: str | None = None,
        temperature: float | None = None,
        tta: str | None = None,
    ) -> None:
        from medres3d.inference.backends import RuntimeNetwork
        from medres3d.inference.tta import with_tta
        from medres3d.modelfile import require_fitted_normalization

        if not isinstance(net, RuntimeNetwork):  # an export is refused at export time if unfitted
            require_fitted_normalization(net, source)
        num_classes = getattr(net, "num_classes", None)
        if num_classes is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"{len(class_names)} class names given for a network with {num_classes} outputs"
            )
        check_choice("aggregate", aggregate, AGGREGATIONS)
        # checked here, not at the first scan: predict_many turns per-scan failures into error rows
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap < 1.0:
            raise ConfigError(f"overlap must be a number in [0, 1), got {overlap!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if negative_class is not None and aggregate != "any":
            raise ConfigError(
                f"negative_class ({negative_class!r}) applies to aggregate='any' only, got {aggregate!r}"
            )
        self.device = resolve_device(device)
        self.net = with_tta(net, tta).to(self.device).eval()
        self.tta = tta
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.options = {
            "overlap": overlap,
            "batch_size": batch_size,
            "aggregate": aggregate,
            "weight_by_foreground": weight_by_foreground,
            "amp": amp,
            "channels_last": channels_last,
        }
        if aggregate == "any":  # resolved only here: other aggregations have no negative class
            self.options["negative_class"] = resolve_negative_class(class_names, negative_class)
        self.evidence = evidence
        self.evidence_cell_size = evidence_cell_size
        self.source = source
        self.warmup_seconds: float | None = None
        if temperature is not None:
            from medres3d.inference.calibration import apply_temperature

            apply_temperature([1.0], temperature)  # refuses a bad value now, not at the first scan
        self.temperature = temperature

    @classmethod
    def load(
        cls,
        model_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        device: str | torch.device = "auto",
        *,
        backend: str = "torch",
        precision: str | None = None,
        **options: Any,
    ) -> Classifier:
        """Read a model file (or an export folder) and build a Classifier (options as for the constructor).

        ``backend`` runs the forward pass of each window batch: ``"torch"``, ``"onnxruntime"`` or
        ``"openvino"`` (optional extras; see :mod:`medres3d.inference.backends`); everything else
        (preprocessing, windows, aggregation, evidence, errors) is the same for all. ``precision``
        ``"fp32"`` or ``"bf16"`` (None: the backend's default, fp32 on the CPU).

        A list of model files is an ensemble: the members' window probabilities are averaged
        (:mod:`medres3d.inference.ensemble`); they must share classes, preprocessing and input.

        Raises:
            ModelFileError: the file is not a valid medres3d model or export.
            NormalizationNotFittedError: its input normalization was never fitted.
            BackendNotInstalledError: the backend's package is not installed.

        Example:
            >>> clf = Classifier.load("model.safetensors", device="cpu", overlap=0.25)  # doctest: +SKIP
            >>> detector = Classifier.load("model.safetensors", aggregate="any")        # doctest: +SKIP
            >>> fast = Classifier.load("export-dir", backend="openvino")                 # doctest: +SKIP
            >>> averaged = Classifier.load("model.safetensors", tta="flip")              # doctest: +SKIP
            >>> folds = Classifier.load(["fold_1/model.safetensors", "fold_2/model.safetensors"])
            ...                                                          # doctest: +SKIP
        """
        from medres3d.inference.network_loader import load_network

        if isinstance(model_file, (list, tuple)):
            from medres3d.inference.ensemble import load_ensemble

            loaded = load_ensemble(model_file, backend=backend, precision=precision, device=device)
            source = " + ".join(os.fspath(m) for m in model_file)
        else:
            loaded = load_network(model_file, backend=backend, precision=precision, device=device)
            source = os.fspath(model_file)
        # a model file's or export sidecar's temperature; an ensemble applies its members' own inside
        options.setdefault("temperature", loaded.temperature)
        if "amp" in options and "amp" in loaded.options:
            raise ConfigError(f"give precision ({precision!r}) or amp ({options['amp']!r}), not both")
        return cls(
            loaded.net,
            loaded.class_names,
            loaded.preprocessing,
            device=loaded.device,
            source=source,
            **{**loaded.options, **options},
        )

    def __repr__(self) -> str:
        return (
            f"Classifier(classes={self.class_names}, device={self.device}, "
            f"input={tuple(getattr(self.net, 'spatial_size', ()))}, source={self.source!r})"
        )

    @property
    def background_value(self) -> float:
        """Padding value after preprocessing (the spec's background), 0 without a spec."""
        return float(getattr(self.preprocessing, "background_value", 0.0) or 0.0)

    def warm_up(self) -> float:
        """Pay the one-time costs (imports, the first forward pass) now; returns their seconds.

        Called by :meth:`predict` and :meth:`predict_many` before their first scan, so that a scan's
        ``seconds`` is its own; later calls return at once. ``warmup_seconds`` keeps the time.

        Example:
            >>> clf.warm_up()   # doctest: +SKIP
            1.84
        """
        if self.warmup_seconds is not None:
            return self.warmup_seconds
        start = time.perf_counter()
        import monai.transforms  # noqa: F401  (the largest imports of loading and preprocessing a scan)

        import medres3d.io.readers  # noqa: F401

        size = tuple(getattr(self.net, "spatial_size", ()) or ())
        channels = int(getattr(self.net, "in_channels", 1) or 1)
        if size:
            sliding_window_classify(torch.zeros(channels, *size), self.net, device=self.device,
                                    **{**self.options, "batch_size": 1, "negative_class": 0})
        self.warmup_seconds = time.perf_counter() - start
        return self.warmup_seconds

    def predict(self, scan: Any) -> Prediction:
        """Classify one scan: a path (NIfTI, DICOM folder...), a Volume, or an array/tensor.

        For a multi-sequence model the scan is a list of paths, one per channel in the order of
        ``preprocessing.channels`` (each resampled onto the first one's grid; see
        :func:`medres3d.io.channels.load_channels`), or a Volume with those channels.
        An array is taken as (H, W, D) or (C, H, W, D) with 1 mm voxels and an identity affine.
        A scan larger than the network input (after the model's spacing and orientation) is
        classified window by window, a smaller one padded (see docs/inference.md).

        Raises:
            VolumeLoadError (and subclasses): the scan could not be loaded.

        Example:
            >>> clf.predict("scan.nii.gz").label   # doctest: +SKIP
            'lesion'
            >>> clf.predict(["t1.nii.gz", "t2.nii.gz", "flair.nii.gz"]).label   # doctest: +SKIP
            'lesion'
        """
        self.warm_up()
        return self.predict_prepared(prepare_scan(scan, self.preprocessing))

    def predict_prepared(self, prepared: PreparedScan) -> Prediction:
        """Classify an already prepared scan (see :func:`~medres3d.inference.prepare.prepare_scan`).

        Raises:
            ConfigError: the scan's channel count is not the network's, naming the scan.
        """
        start = time.perf_counter()
        expected = getattr(self.net, "in_channels", None)
        if expected is not None and prepared.array.shape[0] != expected:
            raise ConfigError(f"{prepared.source or 'scan'}: the network takes {expected} channel(s) but "
                              f"the scan has {prepared.array.shape[0]}; a multi-sequence model takes one "
                              "file per channel (a list of paths)")
        result = sliding_window_classify(
            prepared.tensor,
            self.net,
            background_value=self.background_value,
            device=self.device,
            **self.options,
        )
        evidence = None
        if self.evidence:
            evidence = evidence_map(
                result, prepared.affine, cell_size=self.evidence_cell_size, class_names=self.class_names
            )
            evidence.scan_shape = prepared.scan_shape
            evidence.scan_affine = prepared.scan_affine
        raw = result.probabilities.double().numpy()
        calibration = {}
        if self.temperature is not None and self.options["aggregate"] != "max":  # "max" is no distribution
            from medres3d.inference.calibration import apply_temperature

            calibration = {"temperature": self.temperature,
                           "uncalibrated": dict(zip(self.class_names, raw.tolist(), strict=True))}
            raw = apply_temperature(raw, self.temperature)
        probabilities = {name: float(p) for name, p in zip(self.class_names, raw, strict=True)}
        window = [int(s) for s in result.grid.window_size]
        shape = [int(s) for s in result.grid.image_size]
        warnings = [*prepared.warnings, *result.warnings]
        if result.grid.needs_padding and any(s < w for s, w in zip(shape, window, strict=True)):
            warnings.append(
                f"preprocessed scan {'x'.join(map(str, shape))} is smaller than the network input "
                f"{'x'.join(map(str, window))}: padded with the background value {self.background_value:g}"
            )
        return Prediction(
            label=self.class_names[result.label_index],
            probabilities=probabilities,
            num_windows=result.num_windows,
            seconds=prepared.seconds + time.perf_counter() - start,
            evidence=evidence,
            warnings=warnings,
            source=prepared.source,
            meta={**prepared.meta, "shape": shape, "network_input": window, **calibration},
        )

    def predict_many(
        self, scans: Iterable[Any], *, workers: int = 0, prefetch: int = 2, timeout: float | None = None
    ) -> Iterator[Prediction]:
        """Classify many scans, yielding one Prediction per scan in input order.

        With ``workers > 0``, that many processes load and preprocess upcoming scans (up to
        ``prefetch`` each in advance) while this process runs the network (see
        :mod:`~medres3d.inference.loader_pool`: they are started from a fork server, never forked
        from this process, so they are safe whatever ran here before). A scan that fails to load
        or classify, or whose loader process dies, yields a Prediction with ``status="error"`` and
        the reason in ``error``.

        ``timeout`` (seconds; None or 0, the default: none) limits the loading and preprocessing
        of one scan in a worker: past it the workers are killed, the scan is an error ("timed out
        after N s") and the others go on in fresh workers. With ``workers=0`` scans load in this
        process, where a blocked read cannot be interrupted: the timeout is not enforced.

        Example:
            >>> for p in clf.predict_many(["a.nii.gz", "b/"], workers=2, timeout=600):  # doctest: +SKIP
            ...     print(p.source, p.status, p.label or p.error)
        """
        if not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {workers!r}")
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigError(f"prefetch must be an integer >= 1, got {prefetch!r}")
        timeout = validate_timeout(timeout)
        scans = list(scans)
        if workers == 0:
            items: Iterable[PreparedScan | FailedScan] = (
                prepare_or_fail(s, self.preprocessing) for s in scans
            )
        else:
            loader_context()  # the fork server imports its modules while this process warms up
            items = prefetch_prepared(
                scans, self.preprocessing, workers=workers, prefetch=prefetch, timeout=timeout
            )
        self.warm_up()
        for item in items:
            yield self._predict_item(item)

    def _predict_item(self, item: PreparedScan | FailedScan) -> Prediction:
        if isinstance(item, FailedScan):
            return _failure(item.source, item.error, item.seconds)
        try:
            return self.predict_prepared(item)
        except Exception as err:  # one scan's failure becomes its result; the stream goes on
            return _failure(item.source, describe_error(err), item.seconds)


def _failure(source: str | None, error: str, seconds: float) -> Prediction:
    return Prediction(
        label=None,
        probabilities={},
        num_windows=0,
        seconds=seconds,
        source=source,
        status="error",
        error=error,
    )
