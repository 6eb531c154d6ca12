"""Multi-sequence inputs end to end: a 2-channel manifest trains, predicts, evaluates and explains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medres3d.errors import ConfigError, ManifestError
from medres3d.io.channels import load_channels
from medres3d.io.readers import load_volume
from medres3d.io.volume import Volume
from medres3d.training.manifest import check_files, read_manifest
from medres3d.transforms import PreprocessingSpec

CHANNELS = ["path_a", "path_b"]


@pytest.fixture(scope="module")
def two_channel_manifest(tmp_path_factory) -> Path:
    """8 CT phantoms; channel b is each phantom on a grid of half the resolution (a second file)."""
    from medres3d.synthetic import make_phantom_dataset

    root = tmp_path_factory.mktemp("two_channels")
    single = make_phantom_dataset(root, 8, shape=(20, 20, 16), spacing=(2.5, 2.5, 2.5), seed=5,
                                  split_fractions=(0.75, 0.25, 0.0), lesion_contrast=(300.0, 400.0))
    lines = ["path_a,path_b,label,split"]
    for row in single.read_text().splitlines()[1:]:
        path, label, split = row.split(",")
        vol = load_volume(root / path)
        coarse = vol.affine.copy()
        coarse[:3, :3] *= 2
        second = path.replace(".nii.gz", "_b.nii.gz")
        Volume(np.ascontiguousarray(vol.array[:, ::2, ::2, ::2]), coarse).to_nifti(root / second)
        lines.append(f"{path},{second},{label},{split}")
    manifest = root / "channels.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def trained(two_channel_manifest, tmp_path_factory, make_config):
    from medres3d.training.trainer import Trainer

    cfg = make_config(two_channel_manifest, tmp_path_factory.mktemp("run"),
                      model={"input_size": [20, 20, 16, 2]}, data={"channels": CHANNELS})
    return Trainer(cfg, progress=False, verbose=False).fit()


def _scans(manifest: Path) -> list[list[Path]]:
    return [list(r.channels) for r in read_manifest(manifest, CHANNELS)]


def test_two_channel_model_trains_and_predicts_a_list_like_the_stacked_volume(trained, two_channel_manifest):
    from medres3d.inference.classifier import Classifier
    from medres3d.modelfile import read_model

    model = read_model(trained.model_path)
    assert model.preprocessing.channels == tuple(CHANNELS)
    assert model.net.in_channels == 2
    clf = Classifier.load(trained.model_path, device="cpu")
    a, b = _scans(two_channel_manifest)[0]
    from_list = clf.predict([a, b])
    from_volume = clf.predict(load_channels([a, b], names=CHANNELS))
    assert from_list.ok and from_list.source == str(a)
    assert from_list.probabilities == pytest.approx(from_volume.probabilities, abs=1e-6)
    assert from_list.label == from_volume.label
    # the second channel really enters the network: a blank second channel changes the output
    blank = load_channels([a, b], names=CHANNELS)
    blank.array[1] = -1000.0
    assert clf.predict(blank).probabilities != pytest.approx(from_list.probabilities, abs=1e-6)


def test_channel_count_mismatch_and_missing_channel(trained, two_channel_manifest, tmp_path):
    from medres3d.inference.classifier import Classifier

    clf = Classifier.load(trained.model_path, device="cpu")
    a, b = _scans(two_channel_manifest)[0]
    with pytest.raises(ConfigError, match=r"takes 2 channel\(s\) \['path_a', 'path_b'\].* has 1 channel"):
        clf.predict(a)
    with pytest.raises(ConfigError, match=r"takes 2 channel\(s\).* has 3 file"):
        clf.predict([a, b, b])
    missing = tmp_path / "no_such_b.nii.gz"
    ok, failed, short = clf.predict_many([[a, b], [a, missing], [a]])
    assert ok.ok
    assert failed.status == "error" and "no_such_b.nii.gz: no such file" in failed.error
    assert short.status == "error" and "has 1 file" in short.error


def test_evaluate_a_multichannel_manifest_with_a_missing_channel(trained, two_channel_manifest, tmp_path):
    from medres3d.training.evaluate import evaluate

    lines = two_channel_manifest.read_text().splitlines()
    first = lines[1].split(",")
    lines[1] = ",".join([first[0], "gone_b.nii.gz", *first[2:]])
    broken = two_channel_manifest.parent / "broken.csv"
    broken.write_text("\n".join(lines) + "\n")
    result = evaluate(trained.model_path, broken, split="all", num_resamples=20, device="cpu")
    assert len(result.scans) == 8 and result.num_classified == 7
    (bad,) = result.failed
    assert bad.row == 2 and "gone_b.nii.gz: no such file" in bad.error
    assert bad.path == f"{first[0]};gone_b.nii.gz"


def test_grad_cam_and_cli_on_two_channels(trained, two_channel_manifest):
    from medres3d.cli import app
    from medres3d.inference.classifier import Classifier
    from medres3d.inference.gradcam import explain

    clf = Classifier.load(trained.model_path, device="cpu")
    a, b = _scans(two_channel_manifest)[0]
    explanation = explain(clf, [a, b])
    assert explanation.heatmap.shape == load_volume(a).spatial_shape
    assert np.isfinite(explanation.heatmap).all() and explanation.heatmap.max() > 0
    run = CliRunner().invoke(app, ["predict", str(trained.model_path), "--channels", f"{a},{b}", "--json",
                                   "--device", "cpu"])
    assert run.exit_code == 0, run.output
    record = json.loads(run.output.strip().splitlines()[-1])
    assert record["status"] == "ok" and record["scan"] == f"{a},{b}"
    assert record["probabilities"] == pytest.approx(clf.predict([a, b]).probabilities, abs=1e-5)


def test_config_channels_must_match_the_input_size(tmp_path, make_config):
    with pytest.raises(ConfigError, match=r"data.channels names 2 channel\(s\).*has 1"):
        make_config(tmp_path / "m.csv", tmp_path, data={"channels": CHANNELS})
    with pytest.raises(ConfigError, match="name other manifest columns"):
        make_config(tmp_path / "m.csv", tmp_path, model={"input_size": [20, 20, 16, 2]},
                    data={"channels": ["path_a", "label"]})


def test_manifest_channel_columns(two_channel_manifest, tmp_path):
    rows = read_manifest(two_channel_manifest, ["PATH_A", "path_b"])  # matched case-insensitively
    assert rows[0].path == rows[0].channels[0] and len(rows[0].channels) == 2
    assert rows[0].scan == rows[0].channels
    with pytest.raises(ManifestError, match="missing path_c"):
        read_manifest(two_channel_manifest, ["path_a", "path_c"])
    bad = tmp_path / "bad.csv"
    bad.write_text("path_a,path_b,label\na.nii.gz,,x\n")
    with pytest.raises(ManifestError, match="row 2: empty path_b"):
        read_manifest(bad, CHANNELS)
    lines = two_channel_manifest.read_text().splitlines()
    first = lines[1].split(",")
    lines[1] = ",".join([first[0], "gone_b.nii.gz", *first[2:]])
    missing = two_channel_manifest.parent / "missing.csv"
    missing.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"row 2: 'gone_b\.nii\.gz' does not exist"):
        check_files(read_manifest(missing, CHANNELS), missing)
    # the single-path manifest is read as before
    single = tmp_path / "single.csv"
    single.write_text("path,label\na.nii.gz,x\n")
    (row,) = read_manifest(single)
    assert row.channels == () and row.scan == row.path


def test_spec_channels_round_trip_and_old_specs():
    spec = PreprocessingSpec.preset("mri", channels=["t1", "t2"])
    assert PreprocessingSpec.from_dict(spec.to_dict()) == spec and spec.channels == ("t1", "t2")
    old = PreprocessingSpec.preset("mri").to_dict()
    assert "channels" not in old and PreprocessingSpec.from_dict(old).channels is None
    with pytest.raises(ConfigError, match="distinct non-empty names"):
        PreprocessingSpec(channels=["t1", "t1"])
