"""Model files: round trip, and every way a file can be wrong or hostile is refused by name."""

from __future__ import annotations

import json
import pickle
import stat
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from medres3d.errors import ModelFileError, NormalizationNotFittedError
from medres3d.modelfile import FORMAT, load_model, read_model, require_fitted_normalization, save_model

NAMES = ["normal", "lesion"]


def _rewrite(src: Path, dst: Path, *, meta: dict | None = None, tensors: dict | None = None) -> Path:
    """Copy a model file with metadata entries / tensors replaced (None value: entry removed)."""
    with safe_open(str(src), "pt") as reader:
        metadata = dict(reader.metadata())
    data = load_file(str(src))
    for key, value in (meta or {}).items():
        metadata.pop(key) if value is None else metadata.__setitem__(key, value)
    for key, value in (tensors or {}).items():
        data.pop(key) if value is None else data.__setitem__(key, value)
    save_file(data, str(dst), metadata=metadata)
    return dst


@pytest.fixture
def model_path(tiny_net, tmp_path):
    return save_model(tiny_net, tmp_path / "model.safetensors", class_names=NAMES,
                      training={"epochs": 3, "auc": float("nan"), "data_sha256": "ab" * 32})


def test_round_trip_is_exact(tiny_net, model_path):
    mf = read_model(model_path)
    assert mf.class_names == NAMES
    assert mf.training == {"epochs": 3, "auc": None, "data_sha256": "ab" * 32}  # NaN stored as null
    assert mf.preprocessing is None
    assert mf.net.config == tiny_net.config
    assert not mf.net.training
    expected = tiny_net.state_dict()
    for name, tensor in mf.net.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert mf.net.input.is_fitted and mf.net.input.fitted.dtype == torch.bool
    x = torch.randn(3, 1, 16, 16, 8)
    assert torch.equal(mf.net(x), tiny_net(x))
    require_fitted_normalization(mf.net, model_path)


def test_save_is_atomic_and_overwrites(tiny_net, model_path):
    save_model(tiny_net, model_path, class_names=["b", "a"])
    assert read_model(model_path).class_names == ["b", "a"]
    assert sorted(p.name for p in model_path.parent.iterdir()) == ["model.safetensors"]


def test_model_file_gets_the_permissions_of_an_ordinary_file(model_path):
    # The temporary file must not pass its private 0600 mode on: a model is shared like any output.
    ordinary = model_path.parent / "ordinary.txt"
    ordinary.write_text("x")
    assert stat.S_IMODE(model_path.stat().st_mode) == stat.S_IMODE(ordinary.stat().st_mode)


def test_header_is_plain_json(model_path):
    raw = model_path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8:8 + length])["__metadata__"]
    assert meta["format"] == FORMAT
    assert json.loads(meta["config"])["num_classes"] == 2
    assert json.loads(meta["class_names"]) == NAMES


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_payload_is_never_executed(tmp_path, protocol):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=protocol))
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))  # the payload does work when unpickled
    assert (tmp_path / "control").exists()
    with pytest.raises(ModelFileError) as info:
        load_model(bad)
    assert str(bad) in str(info.value)
    assert not marker.exists()


def test_torch_save_checkpoint_is_refused_unopened(tiny_net, tmp_path):
    bad = tmp_path / "model.safetensors"
    torch.save(tiny_net.state_dict(), bad)
    with pytest.raises(ModelFileError, match="zip archive"):
        read_model(bad)


def test_tampered_header_length_and_truncated_json(model_path, tmp_path):
    raw = model_path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    cases = {
        "longer": struct.pack("<Q", length + 7) + raw[8:],
        "shorter": struct.pack("<Q", length - 5) + raw[8:],
        "huge": struct.pack("<Q", 2**62) + raw[8:],
        "truncated": raw[: 8 + length // 2],
        "empty": b"",
    }
    for name, payload in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(payload)
        with pytest.raises(ModelFileError) as info:
            read_model(bad)
        assert str(bad) in str(info.value), name
        assert "looks like" not in str(info.value), name  # a damaged model file is not "another format"
        if name in ("longer", "huge", "truncated"):
            assert "truncated or tampered" in str(info.value), name


def _scan_files(folder: Path) -> dict[str, Path]:
    import numpy as np

    from medres3d.synthetic.dicom_writer import write_dicom_series
    from medres3d.synthetic.nifti_writer import write_nifti

    volume, affine = np.zeros((4, 4, 3), dtype=np.int16), np.diag([2.0, 2.0, 2.0, 1.0])
    dicom = sorted(write_dicom_series(volume, affine, folder / "series"))[0]
    return {"NIfTI image": write_nifti(volume, affine, folder / "scan.nii"),
            "gzip-compressed file": write_nifti(volume, affine, folder / "scan.nii.gz"),
            "DICOM file": dicom}


def test_other_kinds_of_file_are_named_not_called_tampered(tmp_path):
    config = Path(__file__).parents[2] / "sample_configs" / "tiny.yaml"
    texts = {"text file (YAML?": config.read_text(), "text file (JSON?)": json.dumps({"model": [1, 2]}),
             "text file (CSV?": "path,label\nscan.nii.gz,normal\n", "a text file;": "just some notes\n",
             "text file (YAML? a training config?)": "---\ndata: {manifest: m.csv}\n# été\n"}
    files = {kind: tmp_path / f"{i}.yaml" for i, kind in enumerate(texts)}
    for kind, path in files.items():
        path.write_text(texts[kind], encoding="utf-8")
    files.update(_scan_files(tmp_path))
    for kind, path in files.items():
        with pytest.raises(ModelFileError) as info:
            read_model(path)
        message = str(info.value)
        assert message.startswith(f"{path}: not a medres3d model file: it looks like "), kind
        assert kind in message and "header length" not in message, kind
        assert "pass the model.safetensors file written by `medres3d train`" in message, kind


def test_deeply_nested_json_is_a_model_file_error(model_path, tmp_path):
    nested = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on it
    with safe_open(str(model_path), "pt") as reader:
        metadata = dict(reader.metadata())
    header = json.dumps({"__metadata__": metadata, "deep": None}).replace("null", nested).encode()
    bad = tmp_path / "nested_header.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header)
    in_metadata = _rewrite(model_path, tmp_path / "nested_meta.safetensors", meta={"training": nested})
    for path, needle in ((bad, "header is not valid JSON"), (in_metadata, "'training' is not valid JSON")):
        with pytest.raises(ModelFileError, match=needle):
            read_model(path)


def test_data_offsets_outside_file_are_rejected(model_path, tmp_path):
    raw = model_path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10**6
    text = json.dumps(header).encode()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])
    with pytest.raises(ModelFileError, match="data offsets"):
        read_model(bad)


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"format": None}, "no 'format' entry"),
        ({"format": "medres3d-model/99"}, "medres3d-model/99"),
        ({"class_names": None}, "missing class_names"),
        ({"config": "{not json"}, "'config' is not valid JSON"),
        ({"config": json.dumps({"input_size": [16, 16, 8], "num_classes": 1})}, "num_classes"),
        ({"class_names": json.dumps(["only-one"])}, "1 names"),
        ({"class_names": json.dumps(["a", "a"])}, "distinct"),
        ({"training": json.dumps([1, 2])}, "'training' must be a JSON object"),
    ],
)
def test_bad_metadata_is_rejected(model_path, tmp_path, meta, reason):
    bad = _rewrite(model_path, tmp_path / "bad.safetensors", meta=meta)
    with pytest.raises(ModelFileError, match=reason) as info:
        read_model(bad)
    assert str(bad) in str(info.value)


def test_plain_safetensors_without_metadata_is_rejected(tmp_path):
    bad = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(ModelFileError, match="no metadata"):
        read_model(bad)


def test_tensor_mismatches_are_rejected(model_path, tmp_path):
    cases = {
        "missing tensors": {"fc.bias": None},
        "unexpected tensors": {"extra.weight": torch.zeros(3)},
        r"shape \(2, 4\) but the config needs \(2, 32\)": {"fc.weight": torch.zeros(2, 4)},
        "dtype torch.float64": {"fc.bias": torch.zeros(2, dtype=torch.float64)},
    }
    for reason, tensors in cases.items():
        bad = _rewrite(model_path, tmp_path / "bad.safetensors", tensors=tensors)
        with pytest.raises(ModelFileError, match=reason):
            read_model(bad)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ModelFileError, match="file not found"):
        read_model(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError, match="folder"):
        read_model(tmp_path)


def test_unfitted_normalization_is_refused_naming_the_file(tmp_path, tiny_options):
    from medres3d import resnet3d

    raw = resnet3d((16, 16, 8), 2, **tiny_options)
    path = save_model(raw, tmp_path / "raw.safetensors", class_names=NAMES)
    net = load_model(path)
    with pytest.raises(NormalizationNotFittedError, match=r"raw\.safetensors.*'zerocenter'"):
        require_fitted_normalization(net, path)
    plain = save_model(resnet3d((16, 16, 8), 2, normalization="none", **tiny_options),
                       tmp_path / "plain.safetensors", class_names=NAMES)
    require_fitted_normalization(load_model(plain), plain)  # needs no statistics


def test_header_length_with_pickle_like_low_byte_is_read(tiny_net, tmp_path):
    # The header length is little-endian: a length of 0x..80 starts the file with the byte a
    # pickle starts with. Such a valid file must load (pad the metadata until it happens).
    path = tmp_path / "m.safetensors"
    for padding in range(0, 400, 8):
        save_model(tiny_net, path, class_names=["a", "b"], training={"note": "x" * padding})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length whose low byte is 0x80")
    assert read_model(path).class_names == ["a", "b"]
