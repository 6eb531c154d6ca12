"""Evaluate a model on a manifest split: metrics with bootstrap CIs, curves, per-scan predictions.

Every row of the split goes through :meth:`Classifier.predict_many
<medres3d.inference.classifier.Classifier.predict_many>`, so scans are prepared, windowed and
aggregated exactly as ``medres3d predict`` does. A scan that fails to load or classify is kept:
it is a row of ``predictions.csv`` with ``status=error``, it is counted and listed in the
report, and the metrics say over how many scans of how many they were computed.

Files written to ``out_dir``:

=========================  ==================================================================
``metrics.json``           every metric with its interval, the counts, the failed scans
``metrics.md``             the same as a Markdown table (for a paper or a pull request)
``predictions.csv``        one row per scan: row, path, label, status, error, predicted, p_<class>...
``roc.png``                ROC curves (the positive class, or each class one-vs-rest)
``precision_recall.png``   precision-recall curves, same classes
``reliability.png``        reliability diagram of the top label
``confusion_matrix.png``   confusion matrix of the classified scans
=========================  ==================================================================

Example:
    >>> from medres3d.training.evaluate import evaluate
    >>> result = evaluate("model.safetensors", "data/manifest.csv", split="test",
    ...                   out_dir="eval")                                  # doctest: +SKIP
    >>> result.metrics["roc_auc_macro"]                                    # doctest: +SKIP
    MetricEstimate(value=0.93, low=0.88, high=0.97, resamples=2000, reason=None)
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medres3d._atomic import write_atomically
from medres3d.errors import ConfigError, ManifestError
from medres3d.training.bootstrap import OVERALL_METRICS, PER_CLASS_METRICS, MetricEstimate, bootstrap_metrics
from medres3d.training.manifest import SPLITS, ManifestRow, read_manifest, summarize_problems

if TYPE_CHECKING:
    from medres3d.inference.classifier import Classifier

EVALUATION_SPLITS = (*SPLITS, "all")


@dataclass
class ScanResult:
    """One manifest row's prediction.

    Attributes:
        row: row number in the manifest (header = row 1).
        path: the path as written in the manifest.
        label: the true class.
        status: ``"ok"`` or ``"error"``.
        error: why the scan could not be classified (None when ok).
        predicted: the predicted class (None on error).
        probabilities: class name -> probability (empty on error).
        num_windows, seconds, warnings: as in :class:`~medres3d.inference.classifier.Prediction`.
        uncalibrated: the probabilities before the model's temperature scaling (None without one).
    """

    row: int
    path: str
    label: str
    status: str
    error: str | None
    predicted: str | None
    probabilities: dict[str, float]
    num_windows: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    uncalibrated: dict[str, float] | None = None


@dataclass
class EvaluationResult:
    """Metrics of one split with their confidence intervals, and every scan's prediction.

    Attributes:
        class_names: the model's classes.
        split: the evaluated split (``"all"``: every row).
        metrics: metric key (``"accuracy"``, ``"roc_auc[lesion]"``...) -> estimate with its interval.
        confusion: ``[true, predicted]`` counts over the classified scans.
        scans: every row of the split, in manifest order, failed ones included.
        num_resamples, confidence, seed: the bootstrap's settings.
        notes: what could not be drawn or computed, and why.
        calibration: with a temperature-scaled model, ``{"temperature": T, "before": {...},
            "after": {...}}`` holding the NLL, Brier score and ECE (with CIs) without and with it.
        files: name -> path of each file written (empty without ``out_dir``).
    """

    class_names: list[str]
    split: str
    metrics: dict[str, MetricEstimate]
    confusion: np.ndarray
    scans: list[ScanResult]
    num_resamples: int
    confidence: float
    seed: int
    model: str = ""
    manifest: str = ""
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None

    @property
    def failed(self) -> list[ScanResult]:
        """The scans that could not be classified (not in the metrics, never dropped silently)."""
        return [s for s in self.scans if s.status != "ok"]

    @property
    def num_classified(self) -> int:
        """Scans the metrics were computed over."""
        return len(self.scans) - len(self.failed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, counts, metrics (value, ci_low, ci_high...), confusion, failed scans."""
        return {
            "model": self.model, "manifest": self.manifest, "split": self.split,
            "class_names": self.class_names,
            "num_scans": len(self.scans), "num_classified": self.num_classified,
            "num_failed": len(self.failed),
            "bootstrap": {"resamples": self.num_resamples, "confidence": self.confidence,
                          "seed": self.seed, "stratified": True, "interval": "percentile"},
            "metrics": {key: estimate.to_dict() for key, estimate in self.metrics.items()},
            "confusion_matrix": self.confusion.tolist(),
            "failed": [{"row": s.row, "path": s.path, "error": s.error} for s in self.failed],
            "notes": self.notes,
            "calibration": self.calibration,
        }

    def to_markdown(self) -> str:
        """The metrics as a Markdown table, with the counts above and the failed scans below.

        Example:
            >>> print(result.to_markdown())   # doctest: +SKIP
            | metric | value | 95% CI |
            ...
        """
        level = f"{100 * self.confidence:g}%"
        lines = [f"Evaluation of `{self.model}` on split `{self.split}` of `{self.manifest}`: "
                 f"{self.num_classified} of {len(self.scans)} scans classified, {len(self.failed)} failed "
                 f"(not in the metrics). Intervals: {level} stratified percentile bootstrap, "
                 f"{self.num_resamples} resamples, seed {self.seed}.", "",
                 f"| metric | value | {level} CI |", "|---|---|---|"]
        footnotes: list[str] = []
        for key, estimate in self.metrics.items():
            if estimate.value is None:
                value, interval = "undefined", ""
            else:
                value = f"{estimate.value:.3f}"
                interval = "" if estimate.low is None else f"[{estimate.low:.3f}, {estimate.high:.3f}]"
            if estimate.reason:
                footnotes.append(f"{key}: {estimate.reason}")
                value += f" ({len(footnotes)})"
            lines.append(f"| {key} | {value} | {interval} |")
        if footnotes:
            lines += ["", *[f"({n}) {text}" for n, text in enumerate(footnotes, start=1)]]
        if self.failed:
            lines += ["", f"Failed scans ({len(self.failed)}):", ""]
            lines += [f"- row {s.row} `{s.path}`: {s.error}" for s in self.failed]
        if self.calibration is not None:
            c = self.calibration
            lines += ["", f"Calibration: temperature {c['temperature']:.3f} (fitted on the validation split)",
                      "", "| | NLL | Brier | ECE |", "|---|---|---|---|"]
            for when in ("before", "after"):
                cells = [f"{c[when]['nll']:.4f}"]
                cells += [_with_ci(MetricEstimate(**c[when][k])) for k in ("brier", "ece")]
                lines.append(f"| {when} | " + " | ".join(cells) + " |")
        if self.notes:
            lines += ["", *[f"Note: {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"


def evaluate(
    model: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Classifier,
    manifest: str | os.PathLike[str],
    *,
    split: str = "test",
    out_dir: str | os.PathLike[str] | None = None,
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    bins: int = 15,
    device: str = "auto",
    workers: int = 0,
    classifier_options: dict[str, Any] | None = None,
) -> EvaluationResult:
    """Classify every row of a manifest split and compute the metrics with bootstrap intervals.

    Args:
        model: a model file, several (an ensemble: their probabilities are averaged), or a
            ready :class:`~medres3d.inference.classifier.Classifier`.
        manifest: the manifest CSV (``path,label[,split][,group]``; for a multi-sequence model
            the channel columns its preprocessing names replace ``path``).
        split: ``"train"``, ``"val"``, ``"test"``, or ``"all"`` (every row; the only choice when
            the manifest has no split column).
        out_dir: where to write the files listed in the module docstring (None: write nothing).
        num_resamples, confidence, seed: the stratified bootstrap (see
            :func:`~medres3d.training.bootstrap.bootstrap_metrics`).
        bins: confidence bins of the expected calibration error and the reliability diagram.
        device, workers, classifier_options: for the Classifier (``workers`` loader processes;
            options such as ``overlap`` or ``aggregate``).

    Raises:
        ManifestError: the split has no rows, or a label is not one of the model's classes.
        ConfigError: a bad option, or no scan of the split could be classified.

    Example:
        >>> r = evaluate("model.safetensors", "manifest.csv", out_dir="eval")   # doctest: +SKIP
        >>> r.metrics["accuracy"].value, len(r.failed)                          # doctest: +SKIP
        (0.94, 1)
    """
    from medres3d._checks import check_choice
    from medres3d.inference.classifier import Classifier

    check_choice("split", split, EVALUATION_SPLITS)
    if isinstance(model, Classifier):
        clf = model
    else:
        clf = Classifier.load(model, device=device, **{"evidence": False, **(classifier_options or {})})
    # a multi-sequence model names the manifest's channel columns (its preprocessing's channels)
    channels = getattr(clf.preprocessing, "channels", None)
    rows = _split_rows(read_manifest(manifest, channels), split, manifest)
    _check_labels(rows, clf.class_names, manifest)
    predictions = clf.predict_many([r.scan for r in rows], workers=workers)
    scans = [_scan_result(r, p) for r, p in zip(rows, predictions, strict=True)]
    classified = [s for s in scans if s.status == "ok"]
    if not classified:
        raise ConfigError(f"none of the {len(scans)} scans of split {split!r} of {manifest} could be "
                          f"classified; first error: row {scans[0].row}: {scans[0].error}")
    names = clf.class_names
    y = np.array([names.index(s.label) for s in classified])
    probs = np.array([[s.probabilities[n] for n in names] for s in classified])
    metrics = bootstrap_metrics(y, probs, names, num_resamples=num_resamples, confidence=confidence,
                                seed=seed, bins=bins)
    counts = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(counts, (y, probs.argmax(axis=1)), 1)
    result = EvaluationResult(names, split, _ordered(metrics, names), counts, scans, num_resamples,
                              confidence, seed, model=_describe(model, clf), manifest=os.fspath(manifest))
    if clf.temperature is not None and all(s.uncalibrated for s in classified):
        raw = np.array([[s.uncalibrated[n] for n in names] for s in classified])
        before = bootstrap_metrics(y, raw, names, num_resamples=num_resamples, confidence=confidence,
                                   seed=seed, bins=bins)
        result.calibration = {"temperature": clf.temperature, "before": _calibration_numbers(before, y, raw),
                              "after": _calibration_numbers(metrics, y, probs)}
    if out_dir is not None:
        write_evaluation(result, y, probs, out_dir, bins=bins)
    return result


def _calibration_numbers(metrics: dict[str, MetricEstimate], y: np.ndarray, probs: np.ndarray
                         ) -> dict[str, Any]:
    from medres3d.training.calibration import negative_log_likelihood

    return {"nll": negative_log_likelihood(probs, y),
            "brier": _estimate_fields(metrics["brier"]), "ece": _estimate_fields(metrics["ece"])}


def _estimate_fields(estimate: MetricEstimate) -> dict[str, Any]:
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high,
            "resamples": estimate.resamples, "reason": estimate.reason}


def _describe(model: Any, clf: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    if isinstance(model, Sequence):
        return " + ".join(os.fspath(m) for m in model)
    return str(clf.source or "classifier")


def _split_rows(rows: list[ManifestRow], split: str, manifest: str | os.PathLike[str]) -> list[ManifestRow]:
    if split == "all":
        return rows
    if rows[0].split is None:
        raise ManifestError(manifest, f"the manifest has no split column, so it has no {split!r} rows; "
                                      "evaluate every row with split='all' (--split all)")
    chosen = [r for r in rows if r.split == split]
    if not chosen:
        present = {s: sum(r.split == s for r in rows) for s in SPLITS}
        found = ", ".join(f"{s} {n}" for s, n in present.items() if n)
        raise ManifestError(manifest, f"no rows with split {split!r} (rows per split: {found})")
    return chosen


def _check_labels(rows: Sequence[ManifestRow], class_names: Sequence[str], manifest: Any) -> None:
    problems = [f"row {r.row}: label {r.label!r} is not one of the model's classes {list(class_names)}"
                for r in rows if r.label not in class_names]
    if problems:
        raise ManifestError(manifest, summarize_problems(problems))


def _scan_result(row: ManifestRow, p: Any) -> ScanResult:
    return ScanResult(row.row, row.written_path, row.label, p.status, p.error, p.label, dict(p.probabilities),
                      p.num_windows, p.seconds, list(p.warnings), p.meta.get("uncalibrated"))


def _ordered(metrics: dict[str, MetricEstimate], names: Sequence[str]) -> dict[str, MetricEstimate]:
    """Overall metrics first, then each per-class metric class by class (the table's reading order)."""
    keys = [*OVERALL_METRICS, *(f"{m}[{n}]" for n in names for m in PER_CLASS_METRICS)]
    return {key: metrics[key] for key in keys}


def curve_classes(y: np.ndarray, names: Sequence[str]) -> list[int]:
    """The classes whose one-vs-rest curves are drawn: the positive one of two, else every class present."""
    from medres3d.inference.aggregation import resolve_negative_class

    present = set(np.unique(y).tolist())
    if len(names) == 2:
        return [1 - resolve_negative_class(names)]
    return [c for c in range(len(names)) if c in present]


def _with_ci(estimate: MetricEstimate) -> str:
    if estimate.value is None:
        return "undefined"
    if estimate.low is None:
        return f"{estimate.value:.3f}"
    return f"{estimate.value:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def write_evaluation(result: EvaluationResult, y: np.ndarray, probs: np.ndarray,
                     out_dir: str | os.PathLike[str], *, bins: int = 15) -> dict[str, Path]:
    """Write the files of an evaluation (module docstring) to ``out_dir``; returns name -> path."""
    from medres3d.training.metrics import precision_recall_curve, roc_curve
    from medres3d.training.plots import (
        plot_confusion_matrix,
        plot_precision_recall_curves,
        plot_reliability,
        plot_roc_curves,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics.json": out / "metrics.json", "metrics.md": out / "metrics.md",
             "predictions.csv": out / "predictions.csv"}
    names = result.class_names
    if len(np.unique(y)) >= 2:
        roc, pr = {}, {}
        for c in curve_classes(y, names):
            auc, ap = result.metrics[f"roc_auc[{names[c]}]"], result.metrics[f"average_precision[{names[c]}]"]
            roc[f"{names[c]} (AUC {_with_ci(auc)})"] = roc_curve(y == c, probs[:, c])
            pr[f"{names[c]} (AP {_with_ci(ap)})"] = precision_recall_curve(y == c, probs[:, c])
        files["roc.png"] = plot_roc_curves(roc, out / "roc.png", title=f"ROC, split {result.split}")
        files["precision_recall.png"] = plot_precision_recall_curves(
            pr, out / "precision_recall.png", title=f"Precision-recall, split {result.split}")
    else:
        result.notes.append(f"no ROC or precision-recall figure: the classified scans hold one class only "
                            f"({names[int(y[0])]!r})")
    files["reliability.png"] = plot_reliability(y, probs, out / "reliability.png", bins=bins)
    confusion_png = out / "confusion_matrix.png"
    files["confusion_matrix.png"] = plot_confusion_matrix(result.confusion, names, confusion_png,
                                                          title=f"Confusion matrix, split {result.split}")
    text = json.dumps(result.to_dict(), indent=2)
    write_atomically(files["metrics.json"], lambda tmp: Path(tmp).write_text(text), "metrics file")
    markdown = result.to_markdown()
    write_atomically(files["metrics.md"], lambda tmp: Path(tmp).write_text(markdown), "metrics table")
    write_atomically(files["predictions.csv"], lambda tmp: _write_predictions(tmp, result),
                     "predictions file")
    result.files = files
    return files


def _write_predictions(path: str, result: EvaluationResult) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "label", "status", "error", "predicted",
                         *(f"p_{n}" for n in result.class_names), "num_windows", "seconds", "warnings"])
        for s in result.scans:
            probabilities = [f"{s.probabilities[n]:.6f}" if s.probabilities else ""
                             for n in result.class_names]
            # one line per scan, as in batch output: messages may hold line breaks
            error = (s.error or "").replace("\n", " ")
            writer.writerow([s.row, s.path, s.label, s.status, error, s.predicted or "", *probabilities,
                             s.num_windows, f"{s.seconds:.3f}", " | ".join(s.warnings).replace("\n", " ")])
