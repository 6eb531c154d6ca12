"""Classifier: loading model files, predict on paths/volumes/arrays, predict_many with workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from inference_helpers import CLASS_NAMES, DeadlyScan, make_model_file

from medres3d.errors import ConfigError, DeviceError, NormalizationNotFittedError
from medres3d.inference.aggregation import resolve_negative_class
from medres3d.inference.classifier import Classifier
from medres3d.inference.sliding_window import sliding_window_classify
from medres3d.io.readers import load_volume
from medres3d.modelfile import read_model
from medres3d.models.resnet3d import resnet3d
from medres3d.runtime import resolve_device
from medres3d.synthetic import ct_phantom, make_affine, write_nifti


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    affine = make_affine((0.9, 0.8, 2.0), "axial", flip=(True, False, False), origin=(30.0, -20.0, 5.0))
    paths = []
    for seed, shape in enumerate([(24, 20, 16), (16, 16, 16), (30, 12, 10)]):
        paths.append(
            write_nifti(ct_phantom(shape, lesion=seed == 0, seed=seed), affine, folder / f"s{seed}.nii.gz")
        )
    return paths


def test_load_refuses_unfitted_normalization(tmp_path):
    path = make_model_file(tmp_path / "unfitted.safetensors", fitted=False)
    with pytest.raises(NormalizationNotFittedError, match=r"unfitted\.safetensors"):
        Classifier.load(path, device="cpu")


def test_predict_path_equals_sliding_window_on_the_volume(model_file, scans):
    clf = Classifier.load(model_file, device="cpu", overlap=0.5, evidence_cell_size=1)
    prediction = clf.predict(scans[0])
    # reference: the same network and voxels through sliding_window_classify directly
    volume = load_volume(scans[0])
    reference = sliding_window_classify(
        torch.from_numpy(volume.array), read_model(model_file).net, overlap=0.5
    )
    assert prediction.ok and prediction.source == str(scans[0])
    assert list(prediction.probabilities) == CLASS_NAMES
    # the Classifier runs the BatchNorm-folded network: equal up to float32 rounding
    np.testing.assert_allclose(
        list(prediction.probabilities.values()), reference.probabilities.numpy(), rtol=1e-6, atol=1e-7
    )
    assert prediction.label == CLASS_NAMES[reference.label_index]
    assert prediction.num_windows == reference.num_windows == 2 * 2 * 1
    assert any("no preprocessing spec" in w for w in prediction.warnings)
    # without preprocessing, the full-resolution evidence map lies on the scan's own grid
    np.testing.assert_allclose(prediction.evidence.affine, volume.affine)
    assert prediction.evidence.shape == volume.spatial_shape
    in_scan = prediction.evidence.in_scan_grid()
    np.testing.assert_allclose(in_scan.array, prediction.evidence.array, atol=1e-6)


def test_predict_volume_and_array_agree(model_file, scans):
    clf = Classifier.load(model_file, device="cpu")
    volume = load_volume(scans[1])
    from_volume = clf.predict(volume)
    from_array = clf.predict(volume.array[0])
    assert from_volume.probabilities == pytest.approx(from_array.probabilities, abs=1e-7)
    assert from_volume.num_windows == 1
    assert any("identity affine" in w for w in from_array.warnings)
    assert from_array.source is None


def test_predict_many_streams_results_in_order_and_reports_errors(model_file, scans, tmp_path):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    clf = Classifier.load(model_file, device="cpu")
    inputs = [scans[0], corrupt, scans[2], tmp_path / "missing.nii.gz"]
    singles = {str(p): clf.predict(p) for p in (scans[0], scans[2])}
    for workers in (0, 2):
        results = list(clf.predict_many(inputs, workers=workers))
        assert [r.status for r in results] == ["ok", "error", "ok", "error"]
        assert [r.source for r in results] == [str(p) for p in inputs]
        assert "corrupt.nii.gz" in results[1].error and results[1].label is None
        for r in (results[0], results[2]):
            assert r.probabilities == pytest.approx(singles[r.source].probabilities, abs=1e-7)


def test_a_loader_process_that_dies_costs_one_error_not_the_stream(model_file, scans):
    clf = Classifier.load(model_file, device="cpu")
    inputs = [scans[0], scans[1], DeadlyScan(), scans[2], scans[1]]
    results = list(clf.predict_many(inputs, workers=2, prefetch=1))
    assert [r.status for r in results] == ["ok", "ok", "error", "ok", "ok"]
    assert "loader process died" in results[2].error
    assert results[4].probabilities == pytest.approx(results[1].probabilities, abs=1e-7)


def test_device_validation():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize(
    ("option", "value"), [("overlap", 1.5), ("overlap", -0.1), ("overlap", "0.5"), ("batch_size", 0)]
)
def test_bad_window_options_are_refused_at_load_not_per_scan(model_file, option, value):
    # refused before any scan is read: a typo must not turn every scan of a batch into an error row
    with pytest.raises(ConfigError, match=f"{option} must be .*{value!r}"):
        Classifier.load(model_file, device="cpu", **{option: value})


def test_cli_predict_bad_overlap_is_a_usage_error(model_file, scans):
    from typer.testing import CliRunner

    from medres3d.cli import app

    result = CliRunner().invoke(app, ["predict", str(model_file), str(scans[0]), "--device", "cpu",
                                      "--overlap", "1.5"])
    assert result.exit_code == 2, result.output
    assert "overlap must be" in result.output


def test_model_preprocessing_is_applied_and_evidence_lies_in_the_scan_world(tmp_path):
    from medres3d.transforms import PreprocessingSpec, preprocess

    spec = PreprocessingSpec.preset("ct", spacing=(2.0, 2.0, 2.0))
    model = make_model_file(tmp_path / "ct.safetensors", preprocessing=spec)
    affine = make_affine((1.0, 1.0, 2.0), flip=(True, True, False), origin=(15.0, 12.0, -30.0))
    path = write_nifti(ct_phantom((36, 30, 14), lesion=True, seed=7), affine, tmp_path / "ct.nii.gz")
    prediction = Classifier.load(model, device="cpu", evidence_cell_size=1).predict(path)

    volume = load_volume(path)
    prepared = preprocess(volume, spec)  # reference: the spec applied directly
    reference = sliding_window_classify(prepared.as_tensor(), read_model(model).net, overlap=0.5)
    np.testing.assert_allclose(
        list(prediction.probabilities.values()), reference.probabilities.numpy(), rtol=1e-5
    )
    evidence = prediction.evidence
    assert evidence.shape == tuple(prepared.shape[1:])
    np.testing.assert_allclose(evidence.affine, np.asarray(prepared.affine), atol=1e-6)

    # the preprocessed grid covers the same world box as the scan (RAS, mm), up to a voxel
    def centre(shape, matrix):
        return (matrix @ np.array([(s - 1) / 2 for s in shape] + [1.0]))[:3]

    np.testing.assert_allclose(
        centre(evidence.shape, evidence.affine), centre(volume.spatial_shape, affine), atol=2.0
    )
    in_scan = evidence.in_scan_grid()
    assert in_scan.shape == volume.spatial_shape
    np.testing.assert_allclose(in_scan.affine, affine)
    assert np.all(in_scan.array.sum(axis=0)[2:-2, 2:-2, 1:-1] == pytest.approx(1.0, abs=1e-5))


def test_cli_predict_json_and_table(model_file, scans, tmp_path):
    import json

    from typer.testing import CliRunner

    from medres3d.cli import app

    missing = tmp_path / "missing.nii.gz"
    args = ["predict", str(model_file), str(scans[1]), str(missing), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok", "error"]
    expected = Classifier.load(model_file, device="cpu").predict(scans[1])
    assert records[0]["probabilities"] == pytest.approx(expected.probabilities)
    assert records[0]["label"] == expected.label and "missing.nii.gz" in records[1]["error"]
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0 and expected.label in table.stdout and "error" in table.stdout
    nothing = CliRunner().invoke(app, ["predict", str(model_file), str(missing), "--device", "cpu"])
    assert nothing.exit_code == 1


def test_negative_class_is_resolved_by_name_index_or_convention():
    assert resolve_negative_class(["lesion", "Normal"]) == 1
    assert resolve_negative_class(["tumour", "healthy", "cyst"]) == 1
    assert resolve_negative_class(["a", "b"]) == 0  # no conventional name: label 0
    assert resolve_negative_class(["a", "b"], "b") == resolve_negative_class(["a", "b"], 1) == 1
    assert resolve_negative_class(["a", "b"], "1") == 1  # an index typed on the command line
    assert resolve_negative_class(["1", "0"], "0") == 1  # a class name wins over an index
    with pytest.raises(ConfigError, match="could each be the negative class"):
        resolve_negative_class(["normal", "background", "lesion"])
    net = resnet3d((8, 8, 8), 3, initial_num_filters=4, num_filters=(4, 8), stack_depth=(1, 1),
                   normalization="none")
    names = ["normal", "background", "lesion"]
    assert "negative_class" not in Classifier(net, names, device="cpu").options  # only "any" needs one
    with pytest.raises(ConfigError, match=r"one of the classes \['a', 'b'\] or an index, got 'c'"):
        resolve_negative_class(["a", "b"], "c")
    with pytest.raises(ConfigError, match=r"index in \[0, 1\], got 2"):
        resolve_negative_class(["a", "b"], 2)


def test_any_aggregation_through_the_classifier_and_the_cli(model_file, scans):
    import json

    from typer.testing import CliRunner

    from medres3d.cli import app

    clf = Classifier.load(model_file, device="cpu", aggregate="any")
    assert clf.options["negative_class"] == CLASS_NAMES.index("normal")
    prediction = clf.predict(scans[0])
    volume = torch.from_numpy(load_volume(scans[0]).array)
    reference = sliding_window_classify(volume, read_model(model_file).net)
    # two classes: p(lesion) = the largest window p(lesion), p(normal) = the smallest window p(normal)
    window_lesion = reference.window_probabilities[:, CLASS_NAMES.index("lesion")]
    assert reference.num_windows == 4
    assert prediction.probabilities["lesion"] == pytest.approx(float(window_lesion.max()), abs=1e-6)
    assert prediction.probabilities["normal"] == pytest.approx(1.0 - float(window_lesion.max()), abs=1e-6)
    args = ["predict", str(model_file), str(scans[0]), "--device", "cpu", "--json", "--aggregate", "any"]
    for chosen in ([], ["--negative-class", "normal"], ["--negative-class", "0"]):
        result = CliRunner().invoke(app, [*args, *chosen])
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        assert record["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-7)
    flipped = json.loads(CliRunner().invoke(app, [*args, "--negative-class", "lesion"]).stdout)
    assert flipped["probabilities"]["normal"] == pytest.approx(
        float(reference.window_probabilities[:, 0].max()), abs=1e-6
    )
    with pytest.raises(ConfigError, match="applies to aggregate='any' only"):
        Classifier.load(model_file, device="cpu", negative_class="normal")
