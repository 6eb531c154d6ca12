"""Exported networks and inference backends: round trips, equal predictions, refusals, install hints."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch
from inference_helpers import CLASS_NAMES
from typer.testing import CliRunner

from medres3d.cli import app
from medres3d.errors import BackendNotInstalledError, ConfigError, ModelFileError
from medres3d.inference import backends
from medres3d.inference.backends import SIDECAR, file_sha256, read_export
from medres3d.inference.batch_output import read_results
from medres3d.inference.classifier import Classifier
from medres3d.inference.export import export_model
from medres3d.synthetic import ct_phantom, make_affine, make_messy_dicom_tree, write_nifti

# format -> the backend that runs it, and the package it needs
FORMATS = {"onnx": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino"),
           "torchscript": ("torch", "torch")}


def _available(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


def _needs(package: str):
    return pytest.mark.skipif(not _available(package), reason=f"{package} is not installed")


@pytest.fixture(scope="module")
def exports(model_file, tmp_path_factory):
    """format -> export folder of the tiny model, for every format whose runtime is installed."""
    folder = tmp_path_factory.mktemp("exports")
    return {fmt: export_model(model_file, folder / fmt, fmt).folder
            for fmt, (_, package) in FORMATS.items() if _available(package)}


@pytest.fixture(scope="module")
def large_scan(tmp_path_factory):
    # 40x34x30 voxels against a 16^3 window: several windows, padding at the edges
    path = tmp_path_factory.mktemp("scan") / "large.nii.gz"
    return write_nifti(ct_phantom((40, 34, 30), lesion=True, seed=3), make_affine((1.0, 1.0, 1.0)), path)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_round_trip_gives_the_torch_predictions(fmt, exports, model_file, large_scan):
    backend, package = FORMATS[fmt]
    if fmt not in exports:
        pytest.skip(f"{package} is not installed")
    sidecar = json.loads((exports[fmt] / SIDECAR).read_text())
    assert sidecar["class_names"] == CLASS_NAMES and sidecar["window_size"] == [16, 16, 16]
    assert sidecar["source_model"]["sha256"] == file_sha256(model_file)
    assert sidecar["verification"]["max_abs_logit_difference"] < 1e-4
    reference = Classifier.load(model_file, device="cpu").predict(large_scan)
    got = Classifier.load(exports[fmt], backend=backend).predict(large_scan)
    assert got.num_windows == reference.num_windows > 1
    assert got.label == reference.label
    for name in CLASS_NAMES:
        assert got.probabilities[name] == pytest.approx(reference.probabilities[name], abs=1e-5)
    assert got.meta["network_input"] == reference.meta["network_input"] == [16, 16, 16]


def test_runtime_network_has_a_dynamic_batch_and_a_fixed_window(exports):
    if "onnx" not in exports:
        pytest.skip("onnxruntime is not installed")
    net = backends.exported_network(read_export(exports["onnx"]), "onnxruntime")
    assert (net.spatial_size, net.in_channels, net.num_classes) == ((16, 16, 16), 1, 2)
    for batch in (1, 5):
        assert tuple(net(torch.zeros(batch, 1, 16, 16, 16)).shape) == (batch, 2)
    with pytest.raises(ConfigError, match=r"takes \(N, 1, 16, 16, 16\) windows"):
        net(torch.zeros(1, 1, 16, 16, 8))


@_needs("onnxruntime")
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_model_file_runs_directly_in_a_runtime_backend(backend, model_file, large_scan):
    if not _available(backend):
        pytest.skip(f"{backend} is not installed")
    reference = Classifier.load(model_file, device="cpu").predict(large_scan)
    got = Classifier.load(model_file, backend=backend).predict(large_scan)
    assert got.probabilities == pytest.approx(reference.probabilities, abs=1e-5)


def _copy(folder, tmp_path):
    import shutil

    return shutil.copytree(folder, tmp_path / folder.name)


@_needs("onnxruntime")
def test_a_changed_or_damaged_exported_file_is_refused_naming_it(exports, tmp_path):
    folder = _copy(exports["onnx"], tmp_path)
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"model\.onnx: changed or damaged since export"):
        Classifier.load(folder, backend="onnxruntime")
    # garbage whose hash was recorded (a sidecar rewritten by hand): the runtime's refusal, named
    (folder / "model.onnx").write_bytes(b"not an onnx graph")
    sidecar = json.loads((folder / SIDECAR).read_text())
    sidecar["files"]["model.onnx"] = file_sha256(folder / "model.onnx")
    (folder / SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(ModelFileError, match=r"model\.onnx: onnxruntime cannot load it"):
        Classifier.load(folder, backend="onnxruntime")
    (folder / SIDECAR).write_text("{not json")
    with pytest.raises(ModelFileError, match=rf"{SIDECAR}: damaged export sidecar"):
        Classifier.load(folder, backend="onnxruntime")
    (folder / SIDECAR).unlink()
    with pytest.raises(ModelFileError, match="not a medres3d export"):
        read_export(folder)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_an_exported_file_that_does_not_match_its_sidecar_is_refused(fmt, exports, tmp_path):
    if fmt not in exports:
        pytest.skip(f"{FORMATS[fmt][1]} is not installed")
    folder = _copy(exports[fmt], tmp_path)
    sidecar = json.loads((folder / SIDECAR).read_text())
    sidecar["window_size"] = [32, 32, 32]
    (folder / SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(ModelFileError, match=r"model\.(onnx|xml): does not match medres3d-export\.json"):
        Classifier.load(folder, backend=FORMATS[fmt][0])


def test_a_backend_that_cannot_run_the_format_says_which_can(exports):
    if "openvino" not in exports:
        pytest.skip("openvino is not installed")
    with pytest.raises(ModelFileError, match=r"model\.xml: a openvino export cannot run with backend "
                                             r"'onnxruntime'; use --backend openvino"):
        Classifier.load(exports["openvino"], backend="onnxruntime")


def test_a_missing_runtime_package_names_the_extra(monkeypatch, model_file, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.raises(BackendNotInstalledError, match=r"pip install 'medres3d\[openvino\]'"):
        backends.require_package("openvino")
    out = tmp_path / "never-written"
    result = CliRunner().invoke(app, ["export", str(model_file), "--format", "openvino", "--out", str(out)])
    assert result.exit_code == 2 and "pip install 'medres3d[openvino]'" in result.output
    assert not out.exists()


def test_precision_choices(model_file, exports):
    with pytest.raises(ConfigError, match="precision"):
        Classifier.load(model_file, precision="fp8")
    with pytest.raises(ConfigError, match="backend"):
        Classifier.load(model_file, backend="tensorrt")
    assert Classifier.load(model_file, precision="bf16", device="cpu").options["amp"] == "bf16"
    if "onnx" in exports:
        with pytest.raises(ConfigError, match="not available with the onnxruntime backend"):
            Classifier.load(exports["onnx"], backend="onnxruntime", precision="bf16")


@_needs("openvino")
def test_openvino_bf16_stays_close_to_fp32(exports, large_scan):
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 instructions")
    fp32 = Classifier.load(exports["openvino"], backend="openvino").predict(large_scan)
    bf16 = Classifier.load(exports["openvino"], backend="openvino", precision="bf16").predict(large_scan)
    assert bf16.probabilities == pytest.approx(fp32.probabilities, abs=0.02)


@_needs("onnxruntime")
def test_cli_export_says_it_verified(model_file, tmp_path):
    args = ["export", str(model_file), "--format", "onnx", "--out", str(tmp_path / "e")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "verified: max |logit difference|" in result.output and "medres3d-export.json" in result.output
    assert read_export(tmp_path / "e").class_names == CLASS_NAMES


# export format, the backend that runs it, and another backend the resumed run is given
BATCH_BACKENDS = [("onnx", "onnxruntime", "onnxruntime"), ("openvino", "openvino", "onnxruntime"),
                  ("torchscript", "torch", "openvino")]


@pytest.mark.parametrize(("fmt", "backend", "resume_backend"), BATCH_BACKENDS,
                         ids=[b[0] for b in BATCH_BACKENDS])
def test_batch_with_a_backend_and_loader_workers_gives_the_torch_rows(fmt, backend, resume_backend,
                                                                      model_file, exports, tmp_path):
    for package in {FORMATS[fmt][1], resume_backend}:
        if not _available(package):
            pytest.skip(f"{package} is not installed")
    tree = make_messy_dicom_tree(tmp_path / "tree", shape=(16, 16, 6))
    runner = CliRunner()
    common = ["--no-progress", "--device", "cpu"]
    torch_out, backend_out = tmp_path / "torch.csv", tmp_path / f"{backend}.csv"
    done = runner.invoke(app, ["batch", str(model_file), str(tree.root), "--out", str(torch_out),
                               "--workers", "0", *common])
    assert done.exit_code == 0, done.output
    # loader worker processes (a fork server) alongside the runtime's own thread pool
    done = runner.invoke(app, ["batch", str(exports[fmt]), str(tree.root), "--out", str(backend_out),
                               "--workers", "2", "--backend", backend, *common])
    assert done.exit_code == 0, done.output
    expected, got = read_results(torch_out), read_results(backend_out)
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    assert any(r["status"] == "error" for r in got)
    for mine, theirs in zip(got, expected, strict=True):
        for column in ("status", "error", "label", "num_windows", "path", "series_uid"):
            assert mine[column] == theirs[column], column
        for name in CLASS_NAMES:
            if theirs["status"] == "ok":
                assert float(mine[f"p_{name}"]) == pytest.approx(float(theirs[f"p_{name}"]), abs=1e-5)
    # resume under another backend (the model file, exported on the fly): nothing left, rows unchanged
    before = backend_out.read_text()
    done = runner.invoke(app, ["batch", str(model_file), str(tree.root), "--out", str(backend_out),
                               "--resume", "--workers", "0", "--backend", resume_backend, *common])
    assert done.exit_code == 0 and "0 ok, 0 error(s)" in done.output, done.output
    assert backend_out.read_text() == before


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_the_calibration_temperature_travels_with_the_export(fmt, tmp_path, large_scan):
    from inference_helpers import make_model_file

    backend, package = FORMATS[fmt]
    if not _available(package):
        pytest.skip(f"{package} is not installed")
    model = make_model_file(tmp_path / "calibrated.safetensors", temperature=2.5)
    folder = export_model(model, tmp_path / fmt, fmt).folder
    assert json.loads((folder / SIDECAR).read_text())["calibration"] == {"method": "temperature",
                                                                         "temperature": 2.5}
    reference = Classifier.load(model, device="cpu", evidence=False).predict(large_scan)
    exported = Classifier.load(folder, device="cpu", backend=backend, evidence=False)
    assert exported.temperature == 2.5
    got = exported.predict(large_scan)
    assert got.meta["temperature"] == 2.5
    for name in CLASS_NAMES:
        assert got.probabilities[name] == pytest.approx(reference.probabilities[name], abs=1e-5)
        assert got.meta["uncalibrated"][name] == pytest.approx(reference.meta["uncalibrated"][name], abs=1e-5)
    # a model file run directly in a runtime backend (exported on the fly) is calibrated too
    if backend != "torch":
        assert Classifier.load(model, device="cpu", backend=backend).temperature == 2.5


def test_an_uncalibrated_export_records_no_temperature(exports):
    folder = next(iter(exports.values()))
    assert json.loads((folder / SIDECAR).read_text())["calibration"] is None
    assert read_export(folder).temperature is None
