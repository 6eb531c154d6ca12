"""Test-time augmentation: the mean over flipped windows, through the Classifier and the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from inference_helpers import TinyConvNet

from medres3d.errors import ConfigError


class SymmetricNet(TinyConvNet):
    """A flip-invariant network: a kernel symmetric along every axis, zero padding, global mean pooling."""

    def __init__(self) -> None:
        from medres3d.models.normalization import InputNormalization

        super().__init__(spatial_size=(8, 8, 8), num_classes=3)
        self.input = InputNormalization("none", 1)
        with torch.no_grad():
            w = self.conv.weight
            flips = [d for r in range(4) for d in itertools.combinations((2, 3, 4), r)]
            w.copy_(sum(w.flip(d) if d else w for d in flips) / len(flips))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.input(x))


@pytest.fixture
def scans():
    rng = np.random.default_rng(3)
    # one window; three windows along H (0, 8, 16: a grid symmetric under flips); padded
    return [rng.normal(0, 1, s).astype(np.float32) for s in ((16, 16, 16), (32, 16, 16), (12, 16, 16))]


def _flips(array: np.ndarray, axes=(0, 1, 2)):
    for r in range(len(axes) + 1):
        for subset in itertools.combinations(axes, r):
            yield np.flip(array, subset).copy() if subset else array


@pytest.mark.parametrize("tta,axes", [("flip", (0, 1, 2)), ("flip:0", (0,)), ("flip:1,2", (1, 2))])
def test_tta_probabilities_are_the_mean_over_flipped_inputs(model_file, scans, tta, axes):
    from medres3d import Classifier

    plain = Classifier.load(model_file, device="cpu", evidence=False)
    augmented = Classifier.load(model_file, device="cpu", evidence=False, tta=tta)
    assert augmented.net.num_copies == 2 ** len(axes)
    for scan in scans:
        flipped = [list(plain.predict(f).probabilities.values()) for f in _flips(scan, axes)]
        expected = np.mean(flipped, axis=0)
        got = augmented.predict(scan)
        assert list(got.probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-6)
        assert got.num_windows == plain.predict(scan).num_windows  # the windows are the same
    # the network is not flip-invariant: TTA changes something
    assert augmented.predict(scans[0]).probabilities != pytest.approx(plain.predict(scans[0]).probabilities,
                                                                       abs=1e-6)


def test_a_flip_invariant_network_gives_identical_results():
    from medres3d import Classifier

    torch.manual_seed(0)
    net = SymmetricNet()
    scan = np.random.default_rng(0).normal(0, 1, (20, 8, 8)).astype(np.float32)
    names = ["a", "b", "c"]
    plain = Classifier(net, names, device="cpu").predict(scan)
    augmented = Classifier(net, names, device="cpu", tta="flip").predict(scan)
    assert augmented.probabilities == pytest.approx(plain.probabilities, abs=1e-6)
    np.testing.assert_allclose(augmented.evidence.array, plain.evidence.array, atol=1e-6)


@pytest.mark.parametrize("bad", ["rotate", "flip:3", "flip:0,0", "flip:x", 2])
def test_a_bad_tta_value_is_named(bad):
    from medres3d.inference.tta import parse_tta

    with pytest.raises(ConfigError, match=repr(bad).replace("(", r"\(")):
        parse_tta(bad)


def test_predict_cli_takes_tta(model_file, scans, tmp_path):
    import nibabel as nib
    from typer.testing import CliRunner

    from medres3d import Classifier
    from medres3d.cli import app

    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(scans[1], np.eye(4)), path)
    expected = Classifier.load(model_file, device="cpu", evidence=False, tta="flip").predict(path)
    result = CliRunner().invoke(app, ["predict", str(model_file), str(path), "--json", "--device", "cpu",
                                      "--tta", "flip"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[-1])
    assert record["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)

    bad = CliRunner().invoke(app, ["predict", str(model_file), str(path), "--device", "cpu", "--tta", "spin"])
    assert bad.exit_code == 2 and "'spin'" in bad.output
