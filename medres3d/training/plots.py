"""Figures of a training run: learning curves and the validation confusion matrix (PNG files).

Drawn on plain ``matplotlib.figure.Figure`` objects, not through pyplot: writing a file then needs
no backend switch, so a notebook's inline backend keeps working after training.

Example:
    >>> history = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "train_accuracy": 0.5,
    ...             "val_accuracy": 0.6, "val_balanced_accuracy": 0.6, "val_auc": 0.7}]
    >>> plot_training_curves(history, "curves.png")           # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _series(history: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [math.nan if h.get(key) is None else float(h[key]) for h in history]


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Loss (train, validation) and validation accuracy / balanced accuracy / AUC per epoch."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(11, 4.2), layout="tight")
    ax_loss, ax_score = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax_loss.plot(epochs, _series(history, key), marker="o", label=label)
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    # balanced accuracy often equals accuracy: dashed so that neither line hides the other
    for key, label, style in (("train_accuracy", "train accuracy", "-"),
                              ("val_accuracy", "val accuracy", "-"),
                              ("val_balanced_accuracy", "val balanced accuracy", "--"),
                              ("val_auc", "val ROC AUC", "-")):
        ax_score.plot(epochs, _series(history, key), marker="o", linestyle=style, label=label)
    ax_score.set(title="Scores", xlabel="epoch", ylim=(0.0, 1.02))
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_confusion_matrix(counts: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str],
                          title: str = "Validation confusion matrix") -> Path:
    """Counts with row-normalized colours (recall per true class), class names on both axes."""
    from matplotlib.figure import Figure

    counts = np.asarray(counts)
    k = len(class_names)
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    size = max(4.0, 0.7 * k + 2.5)
    fig = Figure(figsize=(size + 1.0, size), layout="tight")
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    slanted = k > 3  # long lists of names overlap when horizontal
    ax.set_xticks(range(k), labels=class_names, rotation=45 if slanted else 0,
                  ha="right" if slanted else "center")
    ax.set_yticks(range(k), labels=class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center",
                    color="white" if fractions[i, j] > 0.6 else "black")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike[str],
                    title: str = "ROC curves") -> Path:
    """One ROC curve per entry (a class one-vs-rest, or a fold): legend label -> (fpr, tpr).

    Example:
        >>> plot_roc_curves({"lesion (AUC 0.91)": (fpr, tpr)}, "roc.png")   # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5.0), layout="tight")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    for label, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, drawstyle="steps-post", label=label)
    ax.set(title=title, xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_precision_recall_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                                 path: str | os.PathLike[str],
                                 title: str = "Precision-recall curves") -> Path:
    """One precision-recall curve per entry: legend label -> (recall, precision).

    Example:
        >>> curves = {"lesion (AP 0.88)": (recall, precision)}   # doctest: +SKIP
        >>> plot_precision_recall_curves(curves, "pr.png")   # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5.0), layout="tight")
    ax = fig.subplots()
    for label, (recall, precision) in curves.items():
        ax.plot(recall, precision, drawstyle="steps-pre", label=label)
    ax.set(title=title, xlabel="recall (sensitivity)", ylabel="precision (positive predictive value)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_reliability(y_true: np.ndarray, probabilities: np.ndarray, path: str | os.PathLike[str], *,
                     bins: int = 15, title: str = "Reliability diagram (top label)") -> Path:
    """Accuracy against confidence of the predicted class per confidence bin, and the scans per bin.

    The bins are those of the expected calibration error (:mod:`medres3d.training.bootstrap`).

    Example:
        >>> plot_reliability(y, probs, "reliability.png")   # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    from medres3d.training.bootstrap import confidence_bin

    probs = np.asarray(probabilities, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    index = confidence_bin(confidence, bins)
    counts = np.bincount(index, minlength=bins)
    filled = counts > 0
    accuracy = np.bincount(index, weights=correct, minlength=bins)[filled] / counts[filled]
    mean_confidence = np.bincount(index, weights=confidence, minlength=bins)[filled] / counts[filled]
    fig = Figure(figsize=(5.5, 6.2), layout="tight")
    ax, ax_count = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    ax.plot(mean_confidence, accuracy, marker="o", label="model")
    ax.set(title=title, ylabel="accuracy", ylim=(-0.01, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    edges = np.linspace(0.0, 1.0, bins + 1)
    ax_count.bar(edges[:-1], counts, width=1.0 / bins, align="edge", edgecolor="white")
    ax_count.set(xlabel="confidence of the predicted class", ylabel="scans", xlim=(0.0, 1.0))
    fig.savefig(path, dpi=110)
    return Path(path)
