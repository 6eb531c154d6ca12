"""The embedded-default demo: make data, train a small ResNet3D, evaluate, explain, run a batch.

Everything runs on data the demo makes itself (:mod:`medres3d.synthetic`): CT-like phantoms with
and without a lesion as NIfTI files, a larger phantom for sliding-window inference, and a messy
DICOM tree (shuffled names, a localizer, SEG and SR objects, a text file, a truncated series).
``--quick`` shrinks every step so the whole run takes well under a minute on two CPU cores (the
tests use it); the default run takes a few minutes and learns the task well above chance.

Example:
    >>> from medres3d.demo import run_demo
    >>> report = run_demo("demo-out", quick=True)     # doctest: +SKIP
    >>> report.metrics["accuracy"]                     # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medres3d.errors import ConfigError

CLASS_NAMES = ["normal", "lesion"]
AGGREGATE = "any"  # of the window probabilities of a scan larger than the network's input (negative: normal)
SPACING_MM = 2.0


@dataclass(frozen=True)
class DemoSettings:
    """The sizes of one demo run."""

    num_cases: int  # labelled windows (train/val/test 70/15/15)
    shape: tuple[int, int, int]  # network input size, voxels of SPACING_MM
    num_filters: tuple[int, int]  # filters of the two residual stacks
    epochs: int
    body_shape: tuple[int, int, int]  # full phantom size: training windows are cut from such bodies,
    # the large volume classified with sliding windows is one, the DICOM tree's series cover one
    overlap: float  # of the sliding windows on the large volume (more: a finer evidence map)

    @property
    def tree_shape(self) -> tuple[int, int, int]:
        """Voxels of the DICOM tree's first CT series: the same body on a TREE_SPACING_MM grid."""
        return tuple(round(n * SPACING_MM / t) for n, t in zip(self.body_shape, TREE_SPACING_MM, strict=True))


TREE_SPACING_MM = (1.6, 1.6, 2.5)
QUICK = DemoSettings(16, (24, 24, 24), (4, 8), 2, (40, 40, 32), 0.5)
FULL = DemoSettings(160, (32, 32, 32), (8, 16), 15, (48, 48, 40), 0.75)


@dataclass
class DemoReport:
    """What a demo run produced: the numbers it measured and where its files are."""

    out_dir: Path
    settings: DemoSettings
    metrics: dict[str, float] = field(default_factory=dict)  # held-out test set
    confusion: list[list[int]] = field(default_factory=list)  # [true][predicted], CLASS_NAMES order
    large_volume: dict[str, Any] = field(default_factory=dict)
    batch: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A short human-readable report."""
        lines = [f"medres3d demo ({'quick' if self.settings == QUICK else 'full'}) in {self.out_dir}"]
        if self.metrics:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in self.metrics.items())
            lines.append(f"held-out test set: {shown}")
            lines.append(f"confusion matrix (rows true {CLASS_NAMES}, columns predicted): {self.confusion}")
        if self.large_volume:
            lv = self.large_volume
            lines.append(
                f"large volume {lv['shape']}: {lv['label']} ('{AGGREGATE}' over {lv['num_windows']} windows: "
                f"p(lesion) {lv['p_lesion']:.3f}); evidence p(lesion) at the true lesion centre "
                f"{lv['evidence_at_lesion']:.3f} (median {lv['evidence_median']:.3f}, "
                f"max {lv['evidence_max']:.3f})"
            )
            lines.append(
                f"Grad-CAM ({lv['gradcam_layer']}): peak {lv['gradcam_peak_distance_mm']:.1f} mm from the "
                "true lesion centre"
            )
        if self.batch:
            lines.append(
                f"batch over the DICOM tree: {self.batch['rows']} rows, {self.batch['ok']} ok, "
                f"{self.batch['errors']} error(s); {self.batch['excluded']} excluded (modality CT only), "
                f"{self.batch['skipped']} other file(s) skipped"
            )
            for description, modality, status, label, p_lesion, error in self.batch["table"]:
                shown = "" if p_lesion in (None, "") else f"p(lesion) {float(p_lesion):.2f}"
                lines.append(f"  {status:5} {modality:2} {description:24} {label:7} {shown:15} {error[:90]}")
        lines.extend(f"  {name}: {path}" for name, path in self.files.items())
        lines.append("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        return "\n".join(lines)


def run_demo(
    out_dir: str | os.PathLike[str] = "medres3d-demo",
    *,
    quick: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> DemoReport:
    """Run the whole demo into ``out_dir`` and return its report (also printed step by step via ``log``).

    Args:
        out_dir: output folder: new, empty, or an earlier demo's (which is then replaced).
        quick: tiny sizes (well under a minute on two cores) instead of the default few minutes.
        seed: makes the data and the training reproducible.
        log: where progress lines go.

    Example:
        >>> print(run_demo("demo-out", quick=True).summary())   # doctest: +SKIP
    """
    settings = QUICK if quick else FULL
    out = _fresh_output_dir(Path(out_dir).resolve())
    report = DemoReport(out, settings)

    with _timed(report, "data"):
        manifest, large_path, lesion_mask, tree = _make_data(out, settings, seed, report)
    log(f"data: {settings.num_cases} labelled phantom windows, a {settings.body_shape} volume, a DICOM tree")

    with _timed(report, "training"):
        model_path = _train(out, manifest, settings, seed, report)
    log(f"trained {settings.epochs} epoch(s): {model_path}")

    with _timed(report, "evaluation"):
        _evaluate(manifest, model_path, report)
    log(f"test accuracy {report.metrics['accuracy']:.3f}, ROC AUC {report.metrics['auc']:.3f}")

    with _timed(report, "sliding window"):
        _classify_large(out, large_path, lesion_mask, model_path, report)
    log(f"large volume: {report.large_volume['label']} ({report.large_volume['num_windows']} windows)")

    with _timed(report, "batch"):
        _batch(out, tree.root, model_path, report)
    log(f"batch: {report.batch['rows']} rows, {report.batch['errors']} error(s)")
    return report


_MARKER = ".medres3d-demo"


def _fresh_output_dir(out: Path) -> Path:
    """Empty ``out`` if an earlier demo made it; refuse a non-empty folder the demo did not make."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a folder (new, empty, or an earlier demo's)")
        if (out / _MARKER).exists():
            shutil.rmtree(out)
        elif any(out.iterdir()):
            raise ConfigError(
                f"--out {out} is not empty and was not made by the demo; give a new or empty folder "
                "(the demo replaces everything in its folder)"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("made by `medres3d demo`; deleted and rewritten by the next demo run here\n")
    return out


class _timed:
    """Context manager adding the elapsed seconds of a step to the report."""

    def __init__(self, report: DemoReport, name: str) -> None:
        self.report, self.name = report, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.report.seconds[self.name] = time.perf_counter() - self.start


def _make_data(
    out: Path, settings: DemoSettings, seed: int, report: DemoReport
) -> tuple[Path, Path, Any, Any]:
    from medres3d.synthetic import (
        centered_origin,
        ct_phantom,
        make_affine,
        make_messy_dicom_tree,
        make_phantom_dataset,
        write_nifti,
    )

    spacing = (SPACING_MM,) * 3
    manifest = make_phantom_dataset(
        out / "data" / "phantoms",
        n=settings.num_cases,
        shape=settings.shape,
        spacing=spacing,
        split_fractions=(0.7, 0.15, 0.15),
        lesion_radius_mm=(6.0, 10.0),
        lesion_contrast=(100.0, 200.0),
        body_shape=settings.body_shape,
        seed=seed,
    )
    large, mask = ct_phantom(
        settings.body_shape,
        spacing=spacing,
        lesion=True,
        lesion_radius_mm=8.0,
        lesion_hu=150.0,
        seed=seed + 1000,
        return_mask=True,
    )
    affine = centered_origin(settings.body_shape, make_affine(spacing))
    large_path = write_nifti(large, affine, out / "data" / "large_ct.nii.gz")
    tree = make_messy_dicom_tree(
        out / "data" / "dicom_tree", shape=settings.tree_shape, spacing=TREE_SPACING_MM, seed=seed
    )
    report.files.update(manifest=manifest, large_volume=large_path, dicom_tree=tree.root)
    return manifest, large_path, mask, tree


def _train_config(out: Path, manifest: Path, settings: DemoSettings, seed: int) -> dict[str, Any]:
    first, second = settings.num_filters
    return {
        "data": {"manifest": str(manifest), "class_names": CLASS_NAMES, "cache": "memory"},
        # A soft-tissue window: the lesions differ from their surroundings by 100-200 HU.
        "preprocessing": {
            "preset": "ct",
            "overrides": {"spacing": [SPACING_MM] * 3, "window": [-160.0, 240.0]},
        },
        "model": {
            "input_size": list(settings.shape),
            "initial_filter_size": 3,
            "initial_num_filters": first,
            "stack_depth": [1, 1],
            "num_filters": [first, second],
            "normalization": "zscore",
        },
        "training": {
            "epochs": settings.epochs,
            "batch_size": 8,
            "lr": 3e-3,
            "seed": seed,
            "device": "cpu",
            # Windows of the input size: the saved preprocessing keeps whole volumes, so inference
            # on a larger scan slides windows over it instead of cropping it.
            "patches": True,
            "augmentation": {"flip": {"prob": 0.5, "axes": [0, 1, 2]}},
        },
        "output_dir": str(out / "run"),
    }


def _train(out: Path, manifest: Path, settings: DemoSettings, seed: int, report: DemoReport) -> Path:
    import yaml

    from medres3d.training import Trainer
    from medres3d.training.config import TrainConfig

    raw = _train_config(out, manifest, settings, seed)
    config_path = out / "train_config.yaml"
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = Trainer(TrainConfig.from_dict(raw, base_dir=out, source=str(config_path)), progress=False).fit()
    if result.model_path is None:
        raise ConfigError(f"training in {result.run_dir} ended without a model file")
    report.files.update(train_config=config_path, model=result.model_path, run_dir=result.run_dir)
    return result.model_path


def _evaluate(manifest: Path, model_path: Path, report: DemoReport) -> None:
    from medres3d.inference.classifier import Classifier
    from medres3d.training.metrics import classification_metrics, confusion_matrix
    from medres3d.training.plots import plot_confusion_matrix

    with manifest.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    classifier = Classifier.load(model_path, device="cpu", evidence=False)
    truth = [CLASS_NAMES.index(r["label"]) for r in rows]
    probabilities = np.array(
        [
            [classifier.predict(manifest.parent / r["path"]).probabilities[c] for c in CLASS_NAMES]
            for r in rows
        ]
    )
    metrics = classification_metrics(truth, probabilities)
    report.metrics = {k: float(metrics[k]) for k in ("accuracy", "balanced_accuracy", "auc")}
    counts = confusion_matrix(truth, probabilities.argmax(axis=1).tolist(), len(CLASS_NAMES))
    report.confusion = counts.tolist()
    report.files["test_confusion_png"] = plot_confusion_matrix(
        counts, CLASS_NAMES, report.out_dir / "test_confusion_matrix.png", title="Held-out test set"
    )


def _classify_large(
    out: Path, large_path: Path, lesion_mask: np.ndarray, model_path: Path, report: DemoReport
) -> None:
    import nibabel as nib

    from medres3d.inference.classifier import Classifier
    from medres3d.inference.gradcam import explain, save_overlay_png

    # The network learned windows labelled lesion/normal: a scan holds a lesion if any window does.
    classifier = Classifier.load(
        model_path, device="cpu", overlap=report.settings.overlap, aggregate=AGGREGATE
    )
    prediction = classifier.predict(large_path)
    evidence = prediction.evidence.in_scan_grid()
    lesion_world = evidence.affine @ [*np.argwhere(lesion_mask).mean(axis=0), 1.0]
    evidence_path = evidence.save(out / "large_ct_evidence.nii.gz", "lesion")
    lesion_map = evidence.for_class("lesion")
    center = np.rint(np.argwhere(lesion_mask).mean(axis=0)).astype(int)
    image = nib.load(large_path)
    report.large_volume = {
        "shape": tuple(int(s) for s in image.shape),
        "label": prediction.label,
        "p_lesion": prediction.probabilities["lesion"],
        "num_windows": prediction.num_windows,
        "evidence_max": float(lesion_map.max()),
        "evidence_at_lesion": float(lesion_map[tuple(center)]),
        "evidence_median": float(np.median(lesion_map)),
    }
    png = _plot_evidence(
        image,
        lesion_map,
        lesion_mask,
        lesion_world[:3],
        out / "large_ct_evidence.png",
        prediction.probabilities["lesion"],
    )
    report.files.update(evidence_nifti=evidence_path, evidence_png=png)

    explanation = explain(classifier, large_path, class_name="lesion")
    cam_peak = np.unravel_index(int(np.argmax(explanation.heatmap)), explanation.heatmap.shape)
    report.large_volume["gradcam_peak_distance_mm"] = float(
        np.linalg.norm((explanation.affine @ [*cam_peak, 1.0])[:3] - lesion_world[:3])
    )
    report.large_volume["gradcam_layer"] = explanation.layer
    report.files["gradcam_nifti"] = explanation.save(out / "large_ct_gradcam.nii.gz")
    report.files["gradcam_png"] = save_overlay_png(explanation, out / "large_ct_gradcam.png")


def _plot_evidence(
    image: Any, heat: np.ndarray, lesion: np.ndarray, point: np.ndarray, path: Path, p_lesion: float
) -> Path:
    """CT slices through ``point`` (top row) and the evidence map on the same slices (bottom row).

    ``image`` is the large volume's NIfTI; ``heat`` and ``lesion`` lie on its voxel grid. Drawn by
    :func:`medres3d.viz.plot_orthogonal` (radiological convention) on a plain Figure, with the true
    lesion outlined in green on every panel.
    """
    from matplotlib.figure import Figure

    from medres3d.viz import display_window, plot_orthogonal

    volume = np.asarray(image.dataobj, dtype=np.float32)
    low, high, scale = display_window(volume, "CT")
    figure = Figure(figsize=(13, 9), layout="constrained")
    top, bottom = figure.subfigures(2, 1)
    common = {"point": point, "outline": lesion, "crosshair": False}
    plot_orthogonal(volume, image.affine, axes=top.subplots(1, 3), vmin=low, vmax=high, colorbar_label=scale,
                    title="CT slices through the true lesion centre", **common)
    plot_orthogonal(heat, image.affine, axes=bottom.subplots(1, 3), cmap="inferno", vmin=0.0, vmax=1.0,
                    colorbar_label="p(lesion), averaged over windows",
                    title="window probability of 'lesion' on the same slices", **common)
    figure.suptitle(
        f"Sliding-window classification: p(lesion) = {p_lesion:.2f} ('{AGGREGATE}' over windows); "
        "true lesion outlined in green",
        fontsize=14,
    )
    figure.savefig(path, dpi=100)
    return path


def _batch(out: Path, tree_root: Path, model_path: Path, report: DemoReport) -> None:
    from medres3d.inference.batch import run_batch
    from medres3d.inference.batch_output import read_results

    results = out / "batch_results.csv"
    results.unlink(missing_ok=True)  # a fresh run, not a resume of an earlier demo's rows
    # The model was trained on CT: select CT series (the MR series is excluded by the option).
    summary = run_batch(
        model_path,
        tree_root,
        results,
        workers=0,
        device="cpu",
        modality="CT",
        progress=False,
        classifier_options={"aggregate": AGGREGATE},
    )
    rows = read_results(results)
    report.batch = {
        "rows": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "errors": sum(r["status"] == "error" for r in rows),
        "skipped": summary.skipped_files,
        "excluded": summary.excluded,
        "table": [
            (
                r["description"],
                r["modality"],
                r["status"],
                r["label"] or "",
                r.get("p_lesion"),
                _reason(r["error"]),
            )
            for r in rows
        ],
    }
    report.files["batch_results"] = results


def _reason(error: str | None) -> str:
    """An error message with its leading absolute path shortened to the file name."""
    if not error:
        return ""
    path, sep, reason = error.partition(": ")
    return f"{Path(path).name}: {reason}" if sep and os.sep in path else error
