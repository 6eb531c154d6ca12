"""Ensembles: Classifier.load([...]) averages the members' probabilities; mismatched members are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medres3d.errors import ConfigError

TINY = dict(initial_num_filters=4, num_filters=(4, 8), stack_depth=(1, 1), initial_stride=1)
NAMES = ["normal", "lesion"]


def _member(tmp_path, seed: int, names=NAMES, spec=None, size=(16, 16, 8)):
    from medres3d import fit_normalization, resnet3d, save_model

    torch.manual_seed(seed)
    net = resnet3d(size, 2, normalization="zscore", **TINY)
    fit_normalization(net, [torch.randn(2, 1, *size) * 3 + 5])
    path = tmp_path / f"member{seed}.safetensors"
    return save_model(net.eval(), path, class_names=names, preprocessing=spec)


@pytest.fixture
def scans():
    rng = np.random.default_rng(0)
    # one scan the size of the input, one that needs 3 windows, one smaller (padded)
    return [rng.normal(5, 3, shape).astype(np.float32) for shape in ((16, 16, 8), (32, 16, 8), (12, 16, 8))]


def test_an_ensemble_of_identical_members_equals_one_member(tmp_path, scans):
    from medres3d import Classifier

    member = _member(tmp_path, 0)
    one = Classifier.load(member, device="cpu", evidence=False)
    three = Classifier.load([member, member, member], device="cpu", evidence=False)
    for scan in scans:
        a, b = one.predict(scan), three.predict(scan)
        assert b.probabilities == pytest.approx(a.probabilities, abs=1e-6)
        assert (a.label, a.num_windows) == (b.label, b.num_windows)
    assert three.source == f"{member} + {member} + {member}"


def test_the_ensemble_is_the_mean_of_its_members(tmp_path, scans):
    from medres3d import Classifier

    paths = [_member(tmp_path, seed) for seed in (1, 2, 3)]
    members = [Classifier.load(p, device="cpu", evidence=False) for p in paths]
    ensemble = Classifier.load(paths, device="cpu", evidence=False)
    for scan in scans:
        expected = np.mean([[m.predict(scan).probabilities[n] for n in NAMES] for m in members], axis=0)
        got = ensemble.predict(scan).probabilities
        assert [got[n] for n in NAMES] == pytest.approx(expected.tolist(), abs=1e-6)
    # and the members do differ, or the test would prove nothing
    first, second = (m.predict(scans[0]).probabilities["lesion"] for m in members[:2])
    assert abs(first - second) > 1e-4


def test_members_that_differ_are_refused_naming_what_differs(tmp_path):
    from medres3d import Classifier, PreprocessingSpec

    base = _member(tmp_path, 0)
    swapped = _member(tmp_path, 1, names=["lesion", "normal"])
    with pytest.raises(ConfigError, match=r"share their class names: .*member0.safetensors has \['normal', "
                                          r"'lesion'\], .*member1.safetensors has \['lesion', 'normal'\]"):
        Classifier.load([base, swapped], device="cpu")
    ct = _member(tmp_path, 2, spec=PreprocessingSpec.preset("ct"))
    with pytest.raises(ConfigError, match="share their preprocessing"):
        Classifier.load([base, ct], device="cpu")
    larger = _member(tmp_path, 3, size=(16, 16, 16))
    with pytest.raises(ConfigError, match=r"share their network input size: .* has \(16, 16, 8\), .* has "
                                          r"\(16, 16, 16\)"):
        Classifier.load([base, larger], device="cpu")
    with pytest.raises(ConfigError, match="at least one model file"):
        Classifier.load([], device="cpu")


def test_evaluate_an_ensemble(tmp_path):
    import nibabel as nib

    sk = pytest.importorskip("sklearn.metrics")
    from medres3d import Classifier, evaluate

    rng = np.random.default_rng(1)
    lines = ["path,label"]
    for i in range(12):
        nib.save(nib.Nifti1Image(rng.normal(5 + i % 2, 3, (16, 16, 8)).astype(np.float32), np.eye(4)),
                 tmp_path / f"s{i}.nii.gz")
        lines.append(f"s{i}.nii.gz,{NAMES[i % 2]}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    paths = [_member(tmp_path, seed) for seed in (4, 5)]
    result = evaluate(paths, manifest, split="all", num_resamples=50, device="cpu")
    members = [Classifier.load(p, device="cpu", evidence=False) for p in paths]
    p_lesion = [np.mean([m.predict(tmp_path / f"s{i}.nii.gz").probabilities["lesion"] for m in members])
                for i in range(12)]
    assert result.metrics["roc_auc[lesion]"].value == pytest.approx(
        sk.roc_auc_score([i % 2 for i in range(12)], p_lesion), abs=1e-6)
    assert result.model == " + ".join(str(p) for p in paths)


def test_predict_and_batch_take_members_on_the_command_line(tmp_path, scans):
    import json

    from typer.testing import CliRunner

    from medres3d import Classifier
    from medres3d.cli import app
    from medres3d.inference.batch_output import read_results
    from medres3d.synthetic import make_affine, write_nifti

    paths = [_member(tmp_path, seed) for seed in (1, 2)]
    scan = write_nifti(scans[1], make_affine(), tmp_path / "scans" / "scan.nii.gz")
    expected = Classifier.load(paths, device="cpu", evidence=False).predict(scan).probabilities
    result = CliRunner().invoke(app, ["predict", str(paths[0]), str(scan), "--member", str(paths[1]),
                                      "--json", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert record["probabilities"] == pytest.approx(expected, abs=1e-6)
    out = tmp_path / "results.csv"
    args = ["batch", str(paths[0]), str(scan.parent), "--out", str(out), "--member", str(paths[1])]
    result = CliRunner().invoke(app, [*args, "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    row = read_results(out)[0]
    assert {name: float(row[f"p_{name}"]) for name in NAMES} == pytest.approx(expected, abs=1e-6)


def test_each_member_is_calibrated_by_its_own_temperature(tmp_path, scans):
    """Members' temperatures apply to their own probabilities before averaging (one window: exactly)."""
    from inference_helpers import make_model_file

    from medres3d import Classifier

    hot = make_model_file(tmp_path / "hot.safetensors", temperature=3.0, seed=1)
    cold = make_model_file(tmp_path / "cold.safetensors", temperature=0.5, seed=2)
    plain = make_model_file(tmp_path / "plain.safetensors", seed=3)
    members = [Classifier.load(m, device="cpu", evidence=False) for m in (hot, cold, plain)]
    assert [m.temperature for m in members] == [3.0, 0.5, None]
    ensemble = Classifier.load([hot, cold, plain], device="cpu", evidence=False)
    assert ensemble.temperature is None  # none left to apply to the averaged probabilities
    scan = np.random.default_rng(1).normal(-300, 100, (16, 16, 16)).astype(np.float32)  # one window
    got = ensemble.predict(scan).probabilities
    calibrated = [m.predict(scan).probabilities for m in members]
    for name in got:
        assert got[name] == pytest.approx(np.mean([c[name] for c in calibrated]), abs=1e-6)
    # the same members without their temperatures give another average: the temperatures were used
    raw = [m.predict(scan).meta.get("uncalibrated", m.predict(scan).probabilities) for m in members]
    assert abs(got["lesion"] - np.mean([r["lesion"] for r in raw])) > 1e-3
