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

import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medres3d.errors import ConfigError, MedRes3DError
from medres3d.inference.evidence import EvidenceMap, evidence_map
from medres3d.inference.sliding_window import AGGREGATIONS, sliding_window_classify

if TYPE_CHECKING:
    from torch import nn

    from medres3d.io.volume import Volume
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
        warnings: anything suspicious met on the way (loader warnings, fallbacks).
        source: the scan's path, or None for an in-memory scan.
        status: ``"ok"`` or ``"error"``.
        error: on error, the reason (the exception's message, naming the file).
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

    @property
    def ok(self) -> bool:
        """True when the scan was classified."""
        return self.status == "ok"


@dataclass
class PreparedScan:
    """A scan loaded and preprocessed, ready for the network (what loader workers hand over)."""

    tensor: torch.Tensor
    affine: np.ndarray
    scan_shape: tuple[int, ...]
    scan_affine: np.ndarray
    warnings: list[str]
    source: str | None
    seconds: float
    volume: Volume | None = None  # the loaded scan, when asked for (not sent between processes)


@dataclass
class FailedScan:
    """A scan that could not be prepared; carried through the loader as a value, not raised."""

    source: str | None
    error: str
    seconds: float


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> the first CUDA device if there is one, else the CPU; validates ``"cuda:k"``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:K', got {device!r}") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif resolved.type != "cpu":
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:K', got {device!r}")
    return resolved


NEGATIVE_CLASS_NAMES = ("normal", "negative", "background", "healthy")


def resolve_negative_class(class_names: Sequence[str], negative_class: int | str | None = None) -> int:
    """The index of the negative class of ``aggregate="any"``.

    ``negative_class`` is a class name, an index, or a string of digits that is not a class name
    (as typed on the command line). None picks the class named one of
    :data:`NEGATIVE_CLASS_NAMES` (case-insensitive); with none of these, class 0 (the usual
    convention of label 0 = negative); with several, the choice is refused as ambiguous.

    Example:
        >>> resolve_negative_class(["lesion", "normal"]), resolve_negative_class(["a", "b"], "b")
        (1, 1)
    """
    names = list(class_names)
    if negative_class is None:
        found = [index for index, name in enumerate(names) if name.lower() in NEGATIVE_CLASS_NAMES]
        if len(found) > 1:
            raise ConfigError(
                f"classes {[names[i] for i in found]} could each be the negative class of "
                "aggregate='any'; choose one with negative_class (--negative-class)"
            )
        return found[0] if found else 0
    if isinstance(negative_class, str):
        if negative_class in names:
            return names.index(negative_class)
        if not negative_class.isdigit():
            raise ConfigError(f"negative_class must be one of the classes {names} or an index, "
                              f"got {negative_class!r}")
        negative_class = int(negative_class)
    if isinstance(negative_class, bool) or not isinstance(negative_class, int) or not (
        0 <= negative_class < len(names)
    ):
        raise ConfigError(
            f"negative_class must be one of the classes {names} or an index in [0, {len(names) - 1}], "
            f"got {negative_class!r}"
        )
    return negative_class


def _as_volume(scan: Any) -> Volume:
    from medres3d.io.readers import load_volume
    from medres3d.io.volume import Volume

    if isinstance(scan, Volume):
        return scan
    if isinstance(scan, (str, os.PathLike)):
        return load_volume(scan)
    if callable(getattr(scan, "load", None)):  # a DicomSeries found by scan_dicom_tree
        return scan.load()
    if isinstance(scan, torch.Tensor):
        scan = scan.detach().cpu().numpy()
    if isinstance(scan, np.ndarray):
        array = scan[None] if scan.ndim == 3 else scan
        volume = Volume(np.asarray(array, dtype=np.float32), np.eye(4))
        volume.meta["warnings"].append("array input: assumed 1 mm voxels in RAS order (identity affine)")
        return volume
    raise ConfigError(
        "a scan must be a path, a Volume, a DicomSeries, a numpy array or a torch tensor, "
        f"got {type(scan).__name__}"
    )


def prepare_scan(
    scan: Any, preprocessing: PreprocessingSpec | None, *, keep_volume: bool = False
) -> PreparedScan:
    """Load ``scan`` and apply ``preprocessing`` (the model file's spec), timing both.

    Without a spec the scan's voxels are used as they are (with a warning). ``keep_volume`` keeps
    the loaded scan in the result (e.g. to display it under an overlay).

    Example:
        >>> prepared = prepare_scan("scan.nii.gz", model_file.preprocessing)  # doctest: +SKIP
        >>> prepared.tensor.shape                                             # doctest: +SKIP
        torch.Size([1, 128, 128, 64])
    """
    start = time.perf_counter()
    volume = _as_volume(scan)
    warnings = list(volume.warnings)
    if preprocessing is None:
        tensor = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))
        affine = volume.affine
        warnings.append("the model file has no preprocessing spec: the scan's voxels were used as they are")
    else:
        from medres3d.transforms import preprocess

        prepared = preprocess(volume, preprocessing)
        affine = np.asarray(prepared.affine, dtype=np.float64)
        tensor = prepared.as_tensor().float()
    source = volume.source if volume.source is not None else (os.fspath(scan) if _is_path(scan) else None)
    return PreparedScan(
        tensor=tensor.contiguous(),
        affine=affine,
        scan_shape=tuple(volume.array.shape[1:]),
        scan_affine=volume.affine,
        warnings=warnings,
        source=source,
        seconds=time.perf_counter() - start,
        volume=volume if keep_volume else None,
    )


def _is_path(scan: Any) -> bool:
    return isinstance(scan, (str, os.PathLike))


def _describe(err: Exception) -> str:
    # project errors already name the file and the reason; others get their type for context
    return str(err) if isinstance(err, MedRes3DError) else f"{type(err).__name__}: {err}"


def _prepare_or_fail(scan: Any, preprocessing: PreprocessingSpec | None) -> PreparedScan | FailedScan:
    """Prepare one scan; a failure is returned as a value so that a stream of scans goes on."""
    start = time.perf_counter()
    try:
        return prepare_scan(scan, preprocessing)
    except Exception as err:  # a per-scan failure must not stop a batch of thousands
        source = os.fspath(scan) if _is_path(scan) else None
        return FailedScan(source, _describe(err), time.perf_counter() - start)


_WORKER_DIED = (
    "the loader process died while preparing this scan (killed by a signal: out of memory, or a "
    "crashing decoder?)"
)


def validate_timeout(timeout: float | None) -> float | None:
    """A per-scan loading timeout in seconds, or None when there is none (``None`` or ``0``).

    Example:
        >>> validate_timeout(2), validate_timeout(0), validate_timeout(None)
        (2.0, None, None)
    """
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (math.isfinite(timeout) and timeout >= 0)
    ):
        raise ConfigError(
            f"timeout must be a number of seconds >= 0 (0 or None: no timeout), got {timeout!r}"
        )
    return float(timeout) or None


def _timed_out(scan: Any, timeout: float, seconds: float) -> FailedScan:
    source = os.fspath(scan) if _is_path(scan) else None
    name = source or str(getattr(scan, "folder", None) or "scan")  # a DicomSeries names its folder
    return FailedScan(
        source,
        f"{name}: timed out after {timeout:g} s while loading and preprocessing (the loader process "
        "was killed; a file that blocks on read, such as a FIFO, or a decoder that does not finish)",
        seconds,
    )


def _loader_pool(workers: int) -> Any:
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),))


def _stop(pool: Any) -> None:
    """Kill the pool's worker processes and reap them: none outlives its pool.

    A worker may be blocked for good (a FIFO, a looping decoder), and what is still in flight is
    no longer wanted, so the workers are killed rather than asked to finish.
    """
    # ProcessPoolExecutor has no public way to kill its workers before Python 3.14
    processes = list((pool._processes or {}).values())
    for process in processes:
        process.kill()
    pool.shutdown(wait=True, cancel_futures=True)
    for process in processes:
        process.join()


def _die_with_parent(parent: int) -> None:
    """Loader worker initializer: exit when the parent process dies, even by SIGKILL.

    ProcessPoolExecutor workers would otherwise wait for work forever after a killed batch.
    """
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us with the parent
    if os.getppid() != parent:  # the parent was already gone
        os._exit(1)

    def watch() -> None:  # portable fallback
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _isolated(
    scan: Any, preprocessing: PreprocessingSpec | None, timeout: float | None
) -> PreparedScan | FailedScan:
    """Prepare one scan alone in a fresh process: tells whether this scan is what kills loaders."""
    from concurrent.futures.process import BrokenProcessPool

    pool = _loader_pool(1)
    start = time.perf_counter()
    try:
        return pool.submit(_prepare_or_fail, scan, preprocessing).result(timeout=timeout)
    except BrokenProcessPool:
        return FailedScan(os.fspath(scan) if _is_path(scan) else None, _WORKER_DIED, 0.0)
    except TimeoutError:
        return _timed_out(scan, timeout or 0.0, time.perf_counter() - start)
    finally:
        _stop(pool)


def prefetch_prepared(
    scans: Sequence[Any],
    preprocessing: PreprocessingSpec | None,
    *,
    workers: int,
    prefetch: int = 2,
    timeout: float | None = None,
) -> Iterator[PreparedScan | FailedScan]:
    """Prepare ``scans`` in ``workers`` processes, at most ``workers * prefetch`` ahead, in order.

    A worker process that dies (OOM killer, a segfaulting decoder) breaks the pool: the scan at the
    head of the queue is then retried alone in a fresh process; if that process dies too, the scan
    becomes a FailedScan, else it was innocent. The pool is rebuilt for the rest, so one deadly scan
    costs one error, not the stream.

    ``timeout`` (seconds; None or 0: none) bounds how long the scan at the head of the queue may
    take once everything before it is done. Scans are prepared in order, so by then it has been
    running for at least that long: it is the one that hangs. Its workers are killed, it becomes a
    FailedScan saying so, and a fresh pool prepares the scans after it (those in flight start over).

    Example:
        >>> items = list(prefetch_prepared(["a.nii.gz", "b.nii.gz"], None, workers=2))  # doctest: +SKIP
    """
    from collections import deque
    from concurrent.futures.process import BrokenProcessPool

    timeout = validate_timeout(timeout)
    position = 0
    while position < len(scans):
        pool = _loader_pool(workers)
        pending: deque[Any] = deque()
        submitted = position
        try:
            while position < len(scans):
                while submitted < len(scans) and len(pending) < workers * prefetch:
                    pending.append(pool.submit(_prepare_or_fail, scans[submitted], preprocessing))
                    submitted += 1
                start = time.perf_counter()
                try:
                    item = pending.popleft().result(timeout=timeout)
                except TimeoutError:
                    _stop(pool)
                    position += 1
                    yield _timed_out(scans[position - 1], timeout or 0.0, time.perf_counter() - start)
                    break  # a fresh pool for the scans after it
                position += 1
                yield item
        except BrokenProcessPool:
            _stop(pool)
            item = _isolated(scans[position], preprocessing, timeout)
            position += 1
            yield item
        finally:
            _stop(pool)


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
    ) -> None:
        from medres3d.modelfile import require_fitted_normalization

        require_fitted_normalization(net, source)
        num_classes = getattr(net, "num_classes", None)
        if num_classes is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"{len(class_names)} class names given for a network with {num_classes} outputs"
            )
        if aggregate not in AGGREGATIONS:
            raise ConfigError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
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
        self.net = net.to(self.device).eval()
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

    @classmethod
    def load(
        cls, model_file: str | os.PathLike[str], device: str | torch.device = "auto", **options: Any
    ) -> Classifier:
        """Read a model file and build a Classifier from it (options as for the constructor).

        Raises:
            ModelFileError: the file is not a valid medres3d model.
            NormalizationNotFittedError: its input normalization was never fitted.

        Example:
            >>> clf = Classifier.load("model.safetensors", device="cpu", overlap=0.25)  # doctest: +SKIP
            >>> detector = Classifier.load("model.safetensors", aggregate="any")        # doctest: +SKIP
        """
        from medres3d.modelfile import read_model

        model = read_model(model_file)
        return cls(
            model.net,
            model.class_names,
            model.preprocessing,
            device=device,
            source=os.fspath(model_file),
            **options,
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

    def predict(self, scan: Any) -> Prediction:
        """Classify one scan: a path (NIfTI, DICOM folder...), a Volume, or an array/tensor.

        An array is taken as (H, W, D) or (C, H, W, D) with 1 mm voxels and an identity affine.

        Raises:
            VolumeLoadError (and subclasses): the scan could not be loaded.

        Example:
            >>> clf.predict("scan.nii.gz").label   # doctest: +SKIP
            'lesion'
        """
        return self.predict_prepared(prepare_scan(scan, self.preprocessing))

    def predict_prepared(self, prepared: PreparedScan) -> Prediction:
        """Classify an already prepared scan (see :func:`prepare_scan`)."""
        start = time.perf_counter()
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
        probabilities = {
            name: float(p) for name, p in zip(self.class_names, result.probabilities, strict=True)
        }
        return Prediction(
            label=self.class_names[result.label_index],
            probabilities=probabilities,
            num_windows=result.num_windows,
            seconds=prepared.seconds + time.perf_counter() - start,
            evidence=evidence,
            warnings=[*prepared.warnings, *result.warnings],
            source=prepared.source,
        )

    def predict_many(
        self, scans: Iterable[Any], *, workers: int = 0, prefetch: int = 2, timeout: float | None = None
    ) -> Iterator[Prediction]:
        """Classify many scans, yielding one Prediction per scan in input order.

        With ``workers > 0``, that many processes load and preprocess upcoming scans (up to
        ``prefetch`` each in advance) while this process runs the network (see
        :func:`prefetch_prepared`). A scan that fails to load or classify, or whose loader process
        dies, yields a Prediction with ``status="error"`` and the reason in ``error``.

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
                _prepare_or_fail(s, self.preprocessing) for s in scans
            )
        else:
            items = prefetch_prepared(
                scans, self.preprocessing, workers=workers, prefetch=prefetch, timeout=timeout
            )
        for item in items:
            yield self._predict_item(item)

    def _predict_item(self, item: PreparedScan | FailedScan) -> Prediction:
        if isinstance(item, FailedScan):
            return _failure(item.source, item.error, item.seconds)
        try:
            return self.predict_prepared(item)
        except Exception as err:  # one scan's failure becomes its result; the stream goes on
            return _failure(item.source, _describe(err), item.seconds)


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
