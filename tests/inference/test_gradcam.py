"""Grad-CAM: equals a hand-written Grad-CAM, lands on the scan's grid, radiological views, PNG, CLI."""

from __future__ import annotations

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from medres3d.cli import app
from medres3d.inference.classifier import Classifier
from medres3d.inference.gradcam import explain, orthogonal_views, save_overlay_png, target_layer
from medres3d.io.readers import load_volume
from medres3d.synthetic import ct_phantom, make_affine, write_nifti


def _manual_grad_cam(net, x, layer, class_index, *, normalize=True):
    """Grad-CAM from its definition (Selvaraju et al.), with plain autograd hooks."""
    store = {}
    handle = net.get_submodule(layer).register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    net.eval()
    logits = net(x)
    handle.remove()
    activation = store["a"]
    (gradient,) = torch.autograd.grad(logits[0, class_index], activation)
    weights = gradient.mean(dim=(2, 3, 4), keepdim=True)
    cam = F.relu((weights * activation).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="trilinear", align_corners=False)[0, 0]
    return ((cam / cam.max()) if normalize else cam).detach().numpy()


def test_single_window_equals_hand_written_grad_cam(model_file, tmp_path):
    affine = make_affine((1.2, 0.9, 2.0), "oblique", origin=(5.0, -3.0, 12.0))
    path = write_nifti(ct_phantom((16, 16, 16), lesion=True, seed=2), affine, tmp_path / "s.nii.gz")
    clf = Classifier.load(model_file, device="cpu")
    explanation = explain(clf, path)
    layer, matlab = target_layer(clf.net)
    assert (layer, matlab) == ("stack2.block1.relu3", "stack2_block1_relu3")
    x = torch.from_numpy(load_volume(path).array)[None]
    reference = _manual_grad_cam(clf.net, x, layer, explanation.class_index)
    assert explanation.label == clf.predict(path).label and explanation.num_windows == 1
    np.testing.assert_allclose(explanation.heatmap, reference, atol=1e-5)
    saved = nib.load(explanation.save(tmp_path / "heat.nii.gz"))
    np.testing.assert_allclose(saved.affine, load_volume(path).affine, atol=1e-5)


def test_large_scan_heatmap_is_on_the_scan_grid(model_file, tmp_path):
    affine = make_affine((1.0, 1.0, 2.0), flip=(True, False, False), origin=(20.0, -10.0, 0.0))
    path = write_nifti(ct_phantom((28, 20, 12), lesion=True, seed=3), affine, tmp_path / "big.nii.gz")
    explanation = explain(Classifier.load(model_file, device="cpu"), path, class_name="lesion")
    assert explanation.heatmap.shape == (28, 20, 12) and explanation.num_windows == 3 * 2 * 1
    assert explanation.label == "lesion"
    assert explanation.heatmap.min() >= 0.0 and explanation.heatmap.max() == pytest.approx(1.0)
    np.testing.assert_allclose(explanation.affine, affine, atol=1e-5)
    # reference: raw per-window Grad-CAM on the zero-padded scan (the model file has no preprocessing,
    # so the tensor grid is the scan's), each window's map averaged where windows overlap, scaled once
    clf = Classifier.load(model_file, device="cpu")
    layer, _ = target_layer(clf.net)
    scan = torch.from_numpy(load_volume(path).array)
    padded = F.pad(scan, (2, 2), value=0.0)  # depth 12 < 16: MONAI pads 2 before and 2 after
    total, count = np.zeros((28, 20, 16)), np.zeros((28, 20, 16))
    for i in (0, 8, 12):
        for j in (0, 4):
            window = padded[None, :, i : i + 16, j : j + 16, :]
            total[i : i + 16, j : j + 16] += _manual_grad_cam(clf.net, window, layer, 1, normalize=False)
            count[i : i + 16, j : j + 16] += 1
    reference = (total / count)[:, :, 2:14]
    np.testing.assert_allclose(explanation.heatmap, reference / reference.max(), atol=1e-5)


def test_views_follow_radiological_convention():
    # voxel axes: i runs to the patient's LEFT (flipped), j anterior, k superior
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    heat = np.zeros((20, 20, 20), np.float32)
    heat[2, 17, 17] = 1.0  # i=2: patient's right; j=17: anterior; k=17: superior
    views = {v.name: v for v in orthogonal_views(np.zeros_like(heat), heat, affine)}

    def hot(view):
        row, column = np.unravel_index(np.argmax(view.overlay), view.overlay.shape)
        assert (column, row) == view.crosshair  # the slices pass through the maximum
        return row / view.overlay.shape[0], column / view.overlay.shape[1]

    row, column = hot(views["axial"])
    assert row < 0.5 and column < 0.5  # anterior up, patient's right on the image's left
    assert views["axial"].markers == ("R", "L", "A", "P")
    row, column = hot(views["coronal"])
    assert row < 0.5 and column < 0.5  # head up, patient's right on the left
    row, column = hot(views["sagittal"])
    assert row < 0.5 and column < 0.5  # head up, anterior on the left
    assert views["coronal"].aspect == pytest.approx(2.0)  # 2 mm slices drawn twice as tall


def test_cli_explain_writes_nifti_and_png(model_file, tmp_path):
    affine = make_affine((1.0, 1.0, 1.5))
    scan = write_nifti(ct_phantom((20, 16, 16), lesion=True, seed=4), affine, tmp_path / "scan.nii.gz")
    out, png = tmp_path / "heat.nii.gz", tmp_path / "heat.png"
    args = ["explain", str(model_file), str(scan), "--out", str(out), "--png", str(png), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert nib.load(out).shape == (20, 16, 16)
    np.testing.assert_allclose(nib.load(out).affine, affine, atol=1e-5)
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 400 and image.shape[1] > 1000


def test_save_overlay_png_reports_write_errors(model_file, tmp_path):
    from medres3d.errors import OutputWriteError

    scan = write_nifti(ct_phantom((16, 16, 16), seed=1), make_affine(), tmp_path / "s.nii.gz")
    explanation = explain(Classifier.load(model_file, device="cpu"), scan)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputWriteError, match="PNG"):
        save_overlay_png(explanation, tmp_path / "file" / "x.png")


def _small_scan(tmp_path):
    affine = make_affine((1.0, 1.0, 1.0))
    return write_nifti(ct_phantom((20, 18, 16), lesion=True, seed=4), affine, tmp_path / "s.nii.gz")


def test_tta_classifier_is_explained_through_its_inner_network(model_file, tmp_path):
    path = _small_scan(tmp_path)
    plain = explain(Classifier.load(model_file, device="cpu"), path, class_name="lesion")
    augmented_clf = Classifier.load(model_file, device="cpu", tta="flip:0")
    augmented = explain(augmented_clf, path, class_name="lesion")
    np.testing.assert_allclose(augmented.heatmap, plain.heatmap, atol=1e-6)
    assert augmented.layer == plain.layer == "stack2_block1_relu3"
    # the label and probabilities stay the augmented prediction's, and the note says so
    assert augmented.probabilities == pytest.approx(augmented_clf.predict(path).probabilities)
    assert any("without test-time augmentation (tta flip:0)" in w for w in augmented.warnings)


def test_folded_network_gives_the_unfolded_networks_grad_cam(model_file, tmp_path):
    from medres3d.modelfile import read_model

    path = _small_scan(tmp_path)
    folded = Classifier.load(model_file, device="cpu")  # the torch backend folds BatchNorm
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.net.modules())
    model = read_model(model_file)
    unfolded = Classifier(model.net, model.class_names, model.preprocessing, device="cpu")
    assert target_layer(folded.net) == target_layer(unfolded.net)
    a, b = explain(folded, path, class_name="lesion"), explain(unfolded, path, class_name="lesion")
    np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-4)


def test_runtime_backends_and_ensembles_are_refused_saying_what_to_load(model_file, tmp_path):
    from medres3d.errors import ConfigError

    pytest.importorskip("onnxruntime")
    path = _small_scan(tmp_path)
    runtime = Classifier.load(model_file, device="cpu", backend="onnxruntime")
    with pytest.raises(ConfigError, match=r"onnxruntime backend.*with backend='torch'"):
        explain(runtime, path)
    ensemble = Classifier.load([model_file, model_file], device="cpu")
    with pytest.raises(ConfigError, match=r"not an ensemble of 2 members .*explain each member"):
        explain(ensemble, path)
