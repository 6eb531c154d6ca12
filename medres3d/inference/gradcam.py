"""Grad-CAM in scan space: which parts of a scan drove the predicted class.

MONAI's :class:`~monai.visualize.GradCAM` runs on the preprocessed input, targeting the output of
the network's last residual block (MATLAB layer ``stack{S}_block{B}_relu{n}``, the last activation
before global pooling). A volume larger than the network's input is explained window by window
(the same windows as the prediction): each window's raw (unnormalized) map is splatted back with
overlap averaging, so windows stay comparable, and the whole map is scaled to [0, 1] once at the
end. The map is then resampled through world coordinates onto the original scan's voxel grid, so
the NIfTI it is saved as has the scan's shape and affine. :func:`save_overlay_png` draws three
orthogonal slices through the map's maximum in radiological convention (:mod:`medres3d.viz`).

Example:
    >>> from medres3d.inference.classifier import Classifier
    >>> clf = Classifier.load("model.safetensors")                    # doctest: +SKIP
    >>> exp = explain(clf, "scan.nii.gz")                              # doctest: +SKIP
    >>> exp.save("heatmap.nii.gz"); save_overlay_png(exp, "heatmap.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medres3d.errors import ConfigError, OutputWriteError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from medres3d.inference.classifier import Classifier
    from medres3d.viz import SliceView


@dataclass
class Explanation:
    """A Grad-CAM heatmap on the original scan's grid.

    Attributes:
        heatmap: (X, Y, Z) float32 in [0, 1] on the scan's voxel grid.
        affine: the scan's 4x4 RAS affine (also the heatmap's).
        scan: (X, Y, Z) the scan's first channel, for display.
        label: the explained class (the predicted one unless asked otherwise).
        class_index: its output index.
        probabilities: the prediction's class probabilities.
        layer: the target layer's MATLAB name.
        num_windows: windows explained.
        warnings: notes from loading and preprocessing.
        modality: the scan's modality (e.g. "CT"; None when unknown, as for NIfTI), for display.
    """

    heatmap: np.ndarray
    affine: np.ndarray
    scan: np.ndarray
    label: str
    class_index: int
    probabilities: dict[str, float]
    layer: str
    num_windows: int
    warnings: list[str] = field(default_factory=list)
    modality: str | None = None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the heatmap as NIfTI with the scan's affine.

        Example:
            >>> explanation.save("heatmap.nii.gz")   # doctest: +SKIP
        """
        from medres3d.io.writers import save_nifti

        return save_nifti(np.ascontiguousarray(self.heatmap, dtype=np.float32), self.affine, path, "heatmap")


def target_layer(net: nn.Module) -> tuple[str, str]:
    """The Grad-CAM target: the last activation of the last residual block.

    Returns:
        (PyTorch module name, MATLAB layer name), e.g. ``("stack4.block3.relu3", "stack4_block3_relu3")``.

    Example:
        >>> from medres3d.models.resnet3d import resnet3d
        >>> net = resnet3d((16, 16, 16), 2, initial_num_filters=4, num_filters=(4, 8), stack_depth=(1, 2))
        >>> target_layer(net)
        ('stack2.block2.relu3', 'stack2_block2_relu3')
    """
    import torch

    config = getattr(net, "config", None)
    if config is None:
        raise ConfigError(f"Grad-CAM needs a medres3d ResNet3D, got {type(net).__name__}")
    block_name = f"stack{len(config.stack_depth)}.block{config.stack_depth[-1]}"
    block = net.get_submodule(block_name)
    relus = [name for name, module in block.named_modules() if isinstance(module, torch.nn.ReLU)]
    if not relus:
        raise ConfigError(f"the block {block_name} has no ReLU to explain")
    name = f"{block_name}.{relus[-1]}"
    return name, name.replace(".", "_")


def pytorch_network(classifier: Classifier) -> tuple[nn.Module, list[str]]:
    """The PyTorch network Grad-CAM differentiates through, and notes on what it is.

    Grad-CAM needs gradients of a PyTorch module's activations, so the network the Classifier runs
    is unwrapped: a test-time augmentation wrapper (:class:`~medres3d.inference.tta.FlipTTA`) gives
    its inner network (the explanation is of the un-flipped network: the flipped copies' maps
    would need flipping back and would cost one backward pass each), ``torch.compile`` and DDP
    wrappers their module. The torch backend's BatchNorm-folded copy is explained as it is: folding
    replaces each BatchNorm by an ``nn.Identity`` and keeps every module name, so
    :func:`target_layer` finds the same ReLU and its activations equal the unfolded network's.

    Raises:
        ConfigError: no PyTorch network to differentiate: a runtime backend (ONNX Runtime,
            OpenVINO, a TorchScript export) or an ensemble; the message says what to load instead.

    Example:
        >>> clf = Classifier.load("model.safetensors", tta="flip")   # doctest: +SKIP
        >>> net, notes = pytorch_network(clf)                          # doctest: +SKIP
        >>> type(net).__name__, notes                                  # doctest: +SKIP
        ('ResNet3D', ['Grad-CAM explains the network without test-time augmentation (tta flip) ...'])
    """
    from medres3d.inference.backends import RuntimeNetwork
    from medres3d.inference.ensemble import MeanProbabilityEnsemble
    from medres3d.inference.tta import FlipTTA

    net = classifier.net
    notes = []
    source = classifier.source or "the model"
    if isinstance(net, FlipTTA):
        notes.append(f"Grad-CAM explains the network without test-time augmentation (tta {classifier.tta}); "
                     "the label and probabilities are the augmented prediction's")
        net = net.net
    if isinstance(net, MeanProbabilityEnsemble):
        raise ConfigError(f"Grad-CAM explains one network, not an ensemble of {len(net.members)} members "
                          f"({source}): explain each member's model file on its own")
    if isinstance(net, RuntimeNetwork):
        raise ConfigError(f"Grad-CAM needs the PyTorch network, but {source} runs in the {net.backend} "
                          "backend, whose network Grad-CAM can neither hook into nor differentiate: load "
                          "the model file (.safetensors) with backend='torch' (medres3d explain does)")
    net = getattr(net, "_orig_mod", net)  # torch.compile keeps the module it compiled here
    return getattr(net, "module", net), notes  # DistributedDataParallel


def _window_cams(
    tensor: torch.Tensor,
    net: nn.Module,
    layer: str,
    class_index: int,
    overlap: float,
    background_value: float,
    batch_size: int,
    device: torch.device,
) -> tuple[np.ndarray, int]:
    """Raw Grad-CAM per window, overlap-averaged onto the tensor's grid: (X, Y, Z), number of windows."""
    from monai.visualize import GradCAM

    from medres3d.inference.sliding_window import window_batches
    from medres3d.inference.windows import WindowGrid, clip_box

    grid = WindowGrid.create(tuple(tensor.shape[1:]), tuple(net.spatial_size), overlap)
    cam = GradCAM(nn_module=net, target_layers=layer, postprocessing=lambda x: x)
    total = np.zeros(grid.image_size, dtype=np.float64)
    count = np.zeros(grid.image_size, dtype=np.float64)
    boxes = iter(grid.boxes())
    for batch in window_batches(tensor.float(), grid, batch_size, float(background_value), device):
        maps = cam(batch.clone(), class_idx=class_index).detach().float().cpu().numpy()[:, 0]
        for window in maps:
            source, target = clip_box(next(boxes), grid.image_size)
            total[source] += window[target]
            count[source] += 1
    return total / np.maximum(count, 1), grid.num_windows


def explain(
    classifier: Classifier,
    scan: Any,
    *,
    class_name: str | None = None,
    batch_size: int = 2,
) -> Explanation:
    """Grad-CAM of ``class_name`` (default: the predicted class) for one scan, in the scan's grid.

    Args:
        classifier: a loaded :class:`~medres3d.inference.classifier.Classifier`.
        scan: a path, Volume or array, as for ``Classifier.predict``.
        class_name: the class to explain; default the predicted label.
        batch_size: windows per backward pass.

    Example:
        >>> exp = explain(Classifier.load("model.safetensors"), "scan.nii.gz")  # doctest: +SKIP
        >>> exp.label, exp.layer, exp.heatmap.shape                             # doctest: +SKIP
        ('lesion', 'stack4_block3_relu3', (512, 512, 120))
    """
    from medres3d.inference.prepare import prepare_scan
    from medres3d.io.resample import resample_to_grid

    prepared = prepare_scan(scan, classifier.preprocessing, keep_volume=True)
    prediction = classifier.predict_prepared(prepared)
    label = prediction.label if class_name is None else class_name
    if label not in classifier.class_names:
        raise ConfigError(f"class_name must be one of {classifier.class_names}, got {class_name!r}")
    class_index = classifier.class_names.index(label)
    net, notes = pytorch_network(classifier)
    layer, matlab_name = target_layer(net)
    raw, num_windows = _window_cams(
        prepared.tensor,
        net,
        layer,
        class_index,
        classifier.options["overlap"],
        classifier.background_value,
        batch_size,
        classifier.device,
    )
    peak = float(raw.max())
    warnings = [*prepared.warnings, *notes]
    if peak > 0:
        raw = raw / peak
    else:
        warnings.append(f"Grad-CAM is zero everywhere for class {label!r} (no positive evidence)")
    heatmap = resample_to_grid(raw[None], prepared.affine, prepared.scan_shape, prepared.scan_affine)[0]
    return Explanation(
        heatmap=np.clip(heatmap, 0.0, 1.0),
        affine=prepared.scan_affine,
        scan=prepared.volume.array[0],
        label=label,
        class_index=class_index,
        probabilities=prediction.probabilities,
        layer=matlab_name,
        num_windows=num_windows,
        warnings=warnings,
        modality=prepared.volume.modality,
    )


def _peak_world(heatmap: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World position (RAS mm) of the heatmap's maximum."""
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return (affine @ np.append(np.asarray(peak, dtype=float), 1.0))[:3]


def orthogonal_views(scan: np.ndarray, heatmap: np.ndarray, affine: np.ndarray) -> list[SliceView]:
    """Axial, coronal and sagittal slices through the heatmap's maximum, in radiological convention.

    :func:`medres3d.viz.orthogonal_slices` of ``scan`` with ``heatmap`` as its overlay: ``image`` is
    the scan's slice, ``overlay`` the heatmap's.

    Example:
        >>> views = orthogonal_views(np.zeros((4, 5, 6)), np.ones((4, 5, 6)), np.eye(4))
        >>> [(v.name, v.markers) for v in views][0]
        ('axial', ('R', 'L', 'A', 'P'))
    """
    from medres3d.viz import orthogonal_slices

    return orthogonal_slices(scan, affine, point=_peak_world(heatmap, affine), overlay=heatmap)


def save_overlay_png(explanation: Explanation, path: str | os.PathLike[str], *, alpha: float = 0.45) -> Path:
    """Three orthogonal slices through the heatmap's maximum, scan in grey, heatmap overlaid.

    Drawn by :func:`medres3d.viz.plot_orthogonal` (radiological convention, orientation letters,
    colour bars) on a plain ``matplotlib.figure.Figure``, so pyplot's backend (a notebook's inline
    one) is left alone. A CT scan is shown in a soft-tissue window (W 400 / L 40), anything else in
    its 1st-99th percentile range (:func:`medres3d.viz.display_window`). The title names the
    explained class, its probability and the target layer.

    Example:
        >>> save_overlay_png(explain(clf, "scan.nii.gz"), "heatmap.png")  # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    from medres3d.viz import display_window, plot_orthogonal

    path = Path(path)
    low, high, scale = display_window(explanation.scan, explanation.modality)
    probability = explanation.probabilities.get(explanation.label, float("nan"))
    figure = Figure(figsize=(13, 5), layout="constrained")
    plot_orthogonal(
        explanation.scan,
        explanation.affine,
        point=_peak_world(explanation.heatmap, explanation.affine),
        axes=figure.subplots(1, 3),
        title=f"Grad-CAM for class '{explanation.label}' (p = {probability:.3f}), layer {explanation.layer}; "
        "radiological convention",
        vmin=low,
        vmax=high,
        colorbar_label=scale,
        overlay=explanation.heatmap,
        overlay_alpha=alpha,
        overlay_label="Grad-CAM (scaled to the maximum)",
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    except OSError as err:
        raise OutputWriteError(path, f"could not write the PNG: {err}") from err
    return path
