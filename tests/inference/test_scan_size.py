"""The inference size rule: larger scans are windowed, smaller ones padded, deliberate crops reported.

A model trained on whole 16^3 inputs has ``spatial_size`` (16, 16, 16) in its preprocessing; a
48 x 16 x 16 scan was centre-cropped to it without a word (issue 10). The references are the
network run by hand on the scan's blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from inference_helpers import make_model_file

from medres3d.inference.batch import run_batch
from medres3d.inference.batch_output import read_results
from medres3d.inference.classifier import Classifier
from medres3d.modelfile import read_model
from medres3d.synthetic import make_affine, write_nifti
from medres3d.transforms import PreprocessingSpec

SIZE = (16, 16, 16)


def _model(tmp_path, size_mode="window"):
    spec = PreprocessingSpec(spacing=None, spatial_size=SIZE, size_mode=size_mode)
    return make_model_file(tmp_path / f"{size_mode}.safetensors", preprocessing=spec)


def _scan() -> np.ndarray:
    """48 x 16 x 16: three different 16^3 blocks along the first axis."""
    rng = np.random.default_rng(0)
    blocks = [rng.normal(-300 + 150 * k, 80 + 40 * k, SIZE) for k in range(3)]
    return np.concatenate(blocks, axis=0).astype(np.float32)


def _softmax_of(net, blocks: list[np.ndarray]) -> torch.Tensor:
    with torch.inference_mode():
        batch = torch.stack([torch.from_numpy(np.ascontiguousarray(b))[None] for b in blocks])
        return torch.softmax(net.eval()(batch), dim=-1)


def test_a_larger_scan_is_classified_window_by_window_over_all_of_it(tmp_path):
    model = _model(tmp_path)
    clf = Classifier.load(model, device="cpu", evidence=False)
    scan = _scan()
    prediction = clf.predict(scan)
    starts = (0, 8, 16, 24, 32)  # window 16, overlap 0.5 over 48 voxels
    assert prediction.num_windows == len(starts)
    expected = _softmax_of(read_model(model).net, [scan[s : s + 16] for s in starts]).mean(dim=0)
    assert list(prediction.probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-5)
    assert prediction.meta["preprocessed_shape"] == [48, 16, 16]
    assert prediction.meta["network_input"] == list(SIZE)
    assert not any("crop" in w or "padded" in w for w in prediction.warnings)


def test_a_smaller_scan_is_padded_and_says_so(tmp_path):
    clf = Classifier.load(_model(tmp_path), device="cpu", evidence=False)
    prediction = clf.predict(_scan()[:10])
    assert prediction.num_windows == 1
    padded = "10x16x16 is smaller than the network input 16x16x16: padded"
    assert any(padded in w for w in prediction.warnings)


def test_a_deliberate_centre_crop_is_applied_and_reported(tmp_path):
    model = _model(tmp_path, "crop-or-pad")
    prediction = Classifier.load(model, device="cpu", evidence=False).predict(_scan())
    assert prediction.num_windows == 1
    expected = _softmax_of(read_model(model).net, [_scan()[16:32]])[0]
    assert list(prediction.probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-5)
    assert any("48x16x16 was centre-cropped (part of the scan was not seen) to 16x16x16" in w
               and "size_mode='crop-or-pad'" in w for w in prediction.warnings)  # fmt: skip


def test_a_deliberate_resize_is_applied_and_reported(tmp_path):
    model = _model(tmp_path, "resize")
    prediction = Classifier.load(model, device="cpu", evidence=False).predict(_scan())
    assert prediction.num_windows == 1
    resized = torch.nn.functional.interpolate(torch.from_numpy(_scan())[None, None], size=SIZE,
                                              mode="trilinear")[0, 0].numpy()  # fmt: skip
    expected = _softmax_of(read_model(model).net, [resized])[0]
    assert list(prediction.probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-4)
    assert any("48x16x16 was resized to 16x16x16" in w for w in prediction.warnings)


def test_the_size_mode_travels_in_the_model_file(tmp_path):
    assert read_model(_model(tmp_path, "resize")).preprocessing.size_mode == "resize"
    valid = "size_mode must be one of 'window', 'crop-or-pad', 'resize', got 'crop'"
    with pytest.raises(ValueError, match=valid):
        PreprocessingSpec(size_mode="crop")


def test_batch_rows_carry_the_pad_warning(tmp_path):
    root = tmp_path / "scans"
    write_nifti(_scan(), make_affine(), root / "large.nii.gz")
    write_nifti(_scan()[:10], make_affine(), root / "small.nii.gz")
    out = tmp_path / "results.csv"
    run_batch(_model(tmp_path), root, out, workers=0, progress=False, device="cpu")
    rows = {row["id"]: row for row in read_results(out)}
    assert rows["large.nii.gz"]["num_windows"] == "5" and rows["large.nii.gz"]["warnings"] == ""
    assert "smaller than the network input 16x16x16: padded" in rows["small.nii.gz"]["warnings"]
