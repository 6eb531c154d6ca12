"""Cross-validation: stratified, grouped K-fold training, out-of-fold predictions and a summary.

The manifest's rows (without its ``test`` rows, which stay held out for :func:`evaluate
<medres3d.training.evaluate.evaluate>`) are dealt into K folds by
:func:`~medres3d.training.manifest.group_folds`: the classes' shares stay even and no patient
(``group`` column) is on both sides of any fold. Fold ``i`` trains a full run with the config in
``output_dir/fold_i/`` (model file, metrics.csv, checkpoint, figures) on the other folds and
validates on fold ``i``; its model then classifies fold ``i`` through the Classifier, as
inference would. Written to ``output_dir``:

=====================  ========================================================================
``cv_summary.json``    per-fold value, mean and SD of every metric; pooled out-of-fold metrics
                       with bootstrap CIs; the folds' rows and patients per class
``cv_summary.md``      the same as a Markdown table
``oof_predictions.csv`` every row once: fold, row, path, label, group, status, predicted, p_<class>
``roc_folds.png``      one ROC curve per fold (the positive class; per class for 3+ classes)
=====================  ========================================================================

Resumable: with ``resume=True`` a fold whose model file exists is not trained again and an
interrupted fold continues from its checkpoint. Under ``torchrun`` the folds run one after
another, each on all ranks; rank 0 predicts the folds and writes the summary.

Example:
    >>> from medres3d.training.config import load_config
    >>> cv = cross_validate(load_config("sample_configs/tiny.yaml"), folds=5)   # doctest: +SKIP
    >>> cv.summary["roc_auc_macro"]["mean"], cv.summary["roc_auc_macro"]["sd"]  # doctest: +SKIP
    (0.94, 0.03)
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medres3d._atomic import write_atomically
from medres3d.errors import ConfigError
from medres3d.training import manifest
from medres3d.training.bootstrap import MetricEstimate, bootstrap_metrics, weighted_metrics
from medres3d.training.config import TrainConfig
from medres3d.training.trainer import Trainer


@dataclass
class FoldResult:
    """One fold: its run folder and model file, whether it was trained now, its metrics."""

    fold: int
    run_dir: Path
    model_path: Path
    trained: bool
    num_train: int
    num_val: int
    metrics: dict[str, float | None] = field(default_factory=dict)


@dataclass
class CrossValidationResult:
    """Folds, per-metric summaries (``{"mean", "sd", "folds": [...]}``) and pooled out-of-fold metrics.

    Attributes:
        run_dir: the output folder holding ``fold_1/`` ... ``fold_K/`` and the summary files.
        folds: one :class:`FoldResult` per fold.
        class_names: the classes (the same order in every fold).
        summary: metric key -> mean, SD (ddof 1) and per-fold values (None where undefined).
        pooled: metric key -> estimate over all out-of-fold predictions, with its bootstrap CI.
        failed: out-of-fold rows that could not be classified (row, path, error).
        files: name -> path of the summary files (rank 0 only).
    """

    run_dir: Path
    folds: list[FoldResult]
    class_names: list[str]
    summary: dict[str, dict[str, Any]]
    pooled: dict[str, MetricEstimate]
    failed: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def to_markdown(self) -> str:
        """Mean ± SD and each fold's value per metric, then the pooled out-of-fold value and CI."""
        k = len(self.folds)
        lines = [f"{k}-fold cross-validation ({self.run_dir}): mean ± SD over folds, each fold's value, and "
                 "the pooled out-of-fold value with its 95% bootstrap CI.", "",
                 "| metric | mean ± SD | " + " | ".join(f"fold {f.fold}" for f in self.folds) +
                 " | pooled OOF [95% CI] |",
                 "|---" * (k + 3) + "|"]
        for key, s in self.summary.items():
            mean = "undefined" if s["mean"] is None else (
                f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["sd"] is not None else f"{s['mean']:.3f}")
            values = ["–" if v is None else f"{v:.3f}" for v in s["folds"]]
            p = self.pooled[key]
            pooled = "undefined" if p.value is None else (
                f"{p.value:.3f}" + ("" if p.low is None else f" [{p.low:.3f}, {p.high:.3f}]"))
            lines.append(f"| {key} | {mean} | " + " | ".join(values) + f" | {pooled} |")
        if self.failed:
            lines += ["", f"Scans that could not be classified ({len(self.failed)}, not in the metrics):", ""]
            lines += [f"- fold {f['fold']}, row {f['row']} `{f['path']}`: {f['error']}" for f in self.failed]
        return "\n".join(lines) + "\n"


def cross_validate(config: TrainConfig, *, folds: int | None = None, resume: bool = False,
                   progress: bool = True, verbose: bool = True) -> CrossValidationResult:
    """Train one run per fold and summarize them (see the module docstring).

    Args:
        config: the training config; ``output_dir`` becomes the parent of the fold folders.
        folds: K (default: ``config.cross_validation.folds``).
        resume: skip folds whose model file exists, continue an interrupted fold from its checkpoint.
        progress, verbose: as for :class:`~medres3d.training.trainer.Trainer`.

    Raises:
        ConfigError: no fold count, fewer patients than folds.
        ManifestError: as for a single training run.

    Example:
        >>> cv = cross_validate(config, folds=5, resume=True)   # doctest: +SKIP
        >>> print(cv.to_markdown())                              # doctest: +SKIP
    """
    from medres3d.training import distributed as mdist

    k = folds if folds is not None else config.cross_validation.folds
    if k is None:
        raise ConfigError("cross-validation needs a number of folds: cross_validation.folds in the config "
                          "or --folds K")
    manifest_path = config.data.manifest
    rows = manifest.read_manifest(manifest_path, config.data.channels)
    names = manifest.class_names_of(rows, config.data.class_names, manifest_path)
    if config.data.class_names is None:
        manifest.check_label_typos(rows, manifest_path)
    parts = manifest.group_folds(rows, k, config.training.seed)
    base = Path(config.output_dir)
    # under torchrun the group is joined once for all folds (each fold's Trainer finds it joined and
    # leaves it): see mdist.teardown for why it must not be re-created between folds
    ctx = mdist.setup(config.training.device)
    try:
        results, oof = _run_folds(config, parts, names, base, ctx.is_main, resume, progress, verbose)
        # before the last barrier: the other ranks wait until rank 0 has written the summary, so
        # that no rank leaves (and exits) while rank 0 still works in the group
        result = _summarize(base, results, names, oof, config.cross_validation.resamples,
                            config.training.seed, write=ctx.is_main)
    except BaseException:
        mdist.teardown(ctx, wait=False)
        raise
    mdist.teardown(ctx)
    return result


def _run_folds(config: TrainConfig, parts: list[Any], names: list[str], base: Path, is_main: bool,
               resume: bool, progress: bool, verbose: bool) -> tuple[list[FoldResult], list[dict[str, Any]]]:
    """Train (or find) every fold's model and predict its validation rows on rank 0."""
    k = len(parts)
    results, oof = [], []
    for number, (train_rows, val_rows) in enumerate(parts, start=1):
        fold_config = config.model_copy(deep=True)
        fold_config.output_dir = base / f"fold_{number}"
        # every fold gets the same class order, even one whose training rows lack a class
        fold_config.data.class_names = names
        model_path = fold_config.output_dir / "model.safetensors"
        trained = not (resume and model_path.exists())
        if verbose and is_main:
            print(f"fold {number}/{k}: " + ("training" if trained else f"done before ({model_path})"),
                  flush=True, file=sys.stderr)
        if trained:
            Trainer(fold_config, resume=resume, progress=progress, verbose=verbose,
                    split=(train_rows, val_rows)).fit()
        fold = FoldResult(number, fold_config.output_dir, model_path, trained, len(train_rows), len(val_rows))
        results.append(fold)
        if is_main:
            oof += _predict_fold(fold, val_rows, config.training.device)
    return results, oof


def _predict_fold(fold: FoldResult, rows: list[manifest.ManifestRow], device: str) -> list[dict[str, Any]]:
    from medres3d.inference.classifier import Classifier

    clf = Classifier.load(fold.model_path, device=device, evidence=False)
    out = []
    for r, p in zip(rows, clf.predict_many([r.scan for r in rows]), strict=True):
        out.append({"fold": fold.fold, "row": r.row, "path": r.written_path, "label": r.label,
                    "group": r.group or "", "status": p.status, "error": p.error or "",
                    "predicted": p.label or "", "probabilities": dict(p.probabilities)})
    return out


def _arrays(records: list[dict[str, Any]], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ok = [r for r in records if r["status"] == "ok"]
    y = np.array([names.index(r["label"]) for r in ok], dtype=np.int64)
    probs = np.array([[r["probabilities"][n] for n in names] for r in ok]).reshape(len(ok), len(names))
    return y, probs


def _summarize(base: Path, folds: list[FoldResult], names: list[str], oof: list[dict[str, Any]],
               resamples: int, seed: int, *, write: bool) -> CrossValidationResult:
    if not write:  # ranks other than 0 did not predict: they return the folds only
        return CrossValidationResult(base, folds, names, {}, {})
    per_fold = []
    for fold in folds:
        y, probs = _arrays([r for r in oof if r["fold"] == fold.fold], names)
        values = weighted_metrics(y, probs, np.ones((1, y.size)), names) if y.size else {}
        fold.metrics = {key: None if math.isnan(v[0]) else float(v[0]) for key, v in values.items()}
        per_fold.append(fold.metrics)
    y, probs = _arrays(oof, names)
    pooled = bootstrap_metrics(y, probs, names, num_resamples=resamples, seed=seed)
    summary = {}
    for key in pooled:
        values = [m.get(key) for m in per_fold]
        defined = np.array([v for v in values if v is not None])
        summary[key] = {"mean": float(defined.mean()) if defined.size else None,
                        "sd": float(defined.std(ddof=1)) if defined.size > 1 else None,
                        "folds": values}
    failed = [{"fold": r["fold"], "row": r["row"], "path": r["path"], "error": r["error"]}
              for r in oof if r["status"] != "ok"]
    result = CrossValidationResult(base, folds, names, summary, pooled, failed)
    _write(result, oof, y)
    return result


def _write(result: CrossValidationResult, oof: list[dict[str, Any]], y: np.ndarray) -> None:
    from medres3d.training.evaluate import curve_classes
    from medres3d.training.metrics import roc_curve
    from medres3d.training.plots import plot_roc_curves

    base, names = result.run_dir, result.class_names
    files = {name: base / name for name in ("cv_summary.json", "cv_summary.md", "oof_predictions.csv")}
    folds = [{"fold": f.fold, "run_dir": str(f.run_dir), "model": str(f.model_path), "trained_now": f.trained,
              "num_train": f.num_train, "num_val": f.num_val} for f in result.folds]
    data = {"class_names": names, "folds": folds,
            "summary": result.summary, "pooled_oof": {k: v.to_dict() for k, v in result.pooled.items()},
            "failed": result.failed}
    text = json.dumps(data, indent=2)
    write_atomically(files["cv_summary.json"], lambda tmp: Path(tmp).write_text(text), "CV summary")
    markdown = result.to_markdown()
    write_atomically(files["cv_summary.md"], lambda tmp: Path(tmp).write_text(markdown), "CV summary table")
    write_atomically(files["oof_predictions.csv"], lambda tmp: _write_oof(tmp, oof, names),
                     "out-of-fold predictions")
    classes = curve_classes(y, names) if len(np.unique(y)) >= 2 else []
    for c in classes:
        curves = {}
        for f in result.folds:
            y_f, p_f = _arrays([r for r in oof if r["fold"] == f.fold], names)
            positive = y_f == c
            if positive.any() and not positive.all():
                auc = f.metrics.get(f"roc_auc[{names[c]}]")
                curves[f"fold {f.fold} (AUC {auc:.3f})"] = roc_curve(positive, p_f[:, c])
        name = "roc_folds.png" if len(classes) == 1 else f"roc_folds_{names[c]}.png"
        files[name] = plot_roc_curves(curves, base / name, title=f"ROC per fold: {names[c]}")
    result.files = files


def _write_oof(path: str, oof: list[dict[str, Any]], names: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", "row", "path", "label", "group", "status", "error", "predicted",
                         *(f"p_{n}" for n in names)])
        for r in sorted(oof, key=lambda r: r["row"]):
            probabilities = [f"{r['probabilities'][n]:.6f}" if r["probabilities"] else "" for n in names]
            writer.writerow([r["fold"], r["row"], r["path"], r["label"], r["group"], r["status"],
                             r["error"].replace("\n", " "), r["predicted"], *probabilities])
