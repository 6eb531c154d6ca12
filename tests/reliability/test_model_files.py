"""Hostile model files: tampered headers, mismatched tensors and pickle payloads.

Every case must raise :class:`~medres3d.errors.ModelFileError` naming the file and the reason, and
no payload may ever run: each pickle would create a marker file when unpickled, and the tests
assert that the marker does not exist afterwards.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from medres3d.errors import ModelFileError
from medres3d.modelfile import read_model, save_model
from medres3d.models.resnet3d import resnet3d
from medres3d.training.checkpoint import load_checkpoint

TINY = {"initial_num_filters": 4, "num_filters": (4, 8), "stack_depth": (1, 1)}


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the "code execution" the tests watch for."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _split(raw: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _join(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    net = resnet3d((16, 16, 16), 2, **TINY)
    path = save_model(net, tmp_path_factory.mktemp("m") / "model.safetensors", class_names=["a", "b"])
    return path.read_bytes()


def _edit_header(edit: Callable[[dict], None]) -> Callable[[bytes, Path], bytes]:
    def build(raw: bytes, tmp: Path) -> bytes:
        header, data = _split(raw)
        edit(header)
        return _join(header, data)

    return build


def _edit_config(**changes) -> Callable[[bytes, Path], bytes]:
    def edit(header: dict) -> None:
        config = json.loads(header["__metadata__"]["config"])
        config.update(changes)
        header["__metadata__"]["config"] = json.dumps(config)

    return _edit_header(edit)


def _set_meta(key: str, value: str | None) -> Callable[[bytes, Path], bytes]:
    def edit(header: dict) -> None:
        if value is None:
            del header["__metadata__"][key]
        else:
            header["__metadata__"][key] = value

    return _edit_header(edit)


def _first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def _offsets_out_of_range(header: dict) -> None:
    header[_first_tensor(header)]["data_offsets"] = [0, 10**12]


def _drop_tensor(header: dict) -> None:
    del header[_first_tensor(header)]


def _other_network(raw: bytes, tmp: Path) -> bytes:
    """Tensors of a wider network under this network's metadata (mismatched shapes)."""
    other = save_model(
        resnet3d((16, 16, 16), 2, **{**TINY, "initial_num_filters": 6, "num_filters": (6, 8)}),
        tmp / "other.safetensors",
        class_names=["a", "b"],
    )
    header, _ = _split(raw)
    other_header, other_data = _split(other.read_bytes())
    other_header["__metadata__"] = header["__metadata__"]
    return _join(other_header, other_data)


def _pickle_payload(tmp: Path) -> bytes:
    return pickle.dumps(_Payload(tmp / "marker"), protocol=2)


def _torch_save_payload(tmp: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": "medres3d-checkpoint/1", "x": _Payload(tmp / "marker")}, buffer)
    return buffer.getvalue()


def _zip_of_pickle(tmp: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", _pickle_payload(tmp))
    return buffer.getvalue()


CASES: dict[str, tuple[Callable[[bytes, Path], bytes], str]] = {
    "empty": (lambda raw, tmp: b"", r"only 0 bytes"),
    "seven-bytes": (lambda raw, tmp: raw[:7], r"only 7 bytes"),
    "header-length-huge": (lambda raw, tmp: struct.pack("<Q", 2**62) + raw[8:], r"header length field"),
    "header-length-past-end": (
        lambda raw, tmp: raw[: len(raw) // 2],
        r"header length field|outside the \d+-byte data section",
    ),
    "header-not-json": (lambda raw, tmp: struct.pack("<Q", 10) + b"{not json!" + raw[18:], r"not valid JSON"),
    "header-json-list": (lambda raw, tmp: struct.pack("<Q", 2) + b"[]", r"not a JSON object"),
    "truncated-tensor-data": (lambda raw, tmp: raw[:-100], r"outside the \d+-byte data section"),
    "offsets-out-of-range": (_edit_header(_offsets_out_of_range), r"data offsets"),
    "no-metadata": (_edit_header(lambda h: h.pop("__metadata__")), r"has no metadata"),
    "wrong-format": (_set_meta("format", "other/1"), r"format 'other/1', expected"),
    "missing-class-names": (_set_meta("class_names", None), r"missing class_names"),
    "class-names-count": (_set_meta("class_names", '["a", "b", "c"]'), r"class_names"),
    "config-not-json": (_set_meta("config", "{oops"), r"'config' is not valid JSON"),
    "config-unknown-option": (_edit_config(pooling_mode="max"), r"not a valid ResNet3D config"),
    "config-wider-than-tensors": (_edit_config(num_filters=[4, 16]), r"network of \d+ bytes|has shape"),
    "config-bomb": (_edit_config(num_filters=[4, 100000]), r"network of \d+ bytes of tensors"),
    "preprocessing-invalid": (_set_meta("preprocessing", '{"intensity": "magic"}'), r"preprocessing"),
    "training-not-object": (_set_meta("training", "[1, 2]"), r"'training' must be a JSON object"),
    "missing-tensor": (_edit_header(_drop_tensor), r"missing tensors|damaged or truncated"),
    "tensors-of-another-network": (_other_network, r"has shape"),
    "pickle-protocol-2": (lambda raw, tmp: _pickle_payload(tmp), r"Python pickle .* not unpickled"),
    "pickle-protocol-0": (
        lambda raw, tmp: pickle.dumps(_Payload(tmp / "marker"), protocol=0),
        r"header length field",
    ),
    "torch-save-zip": (lambda raw, tmp: _torch_save_payload(tmp), r"zip archive .* not opened"),
    "zip-of-pickle": (lambda raw, tmp: _zip_of_pickle(tmp), r"zip archive"),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_model_file_is_refused(name: str, model_bytes: bytes, tmp_path: Path) -> None:
    build, reason = CASES[name]
    path = tmp_path / "model.safetensors"
    path.write_bytes(build(model_bytes, tmp_path))
    with pytest.raises(ModelFileError) as info:
        read_model(path)
    assert type(info.value) is ModelFileError
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")
    assert re.search(reason, info.value.reason), info.value.reason
    assert not (tmp_path / "marker").exists(), "a pickle payload was executed"


@pytest.mark.timeout(20)
def test_the_payload_really_runs_when_unpickled(tmp_path: Path) -> None:
    # guards the tests above: the marker check would be vacuous if the payload did nothing
    pickle.loads(_pickle_payload(tmp_path))
    assert (tmp_path / "marker").exists()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("build", [_torch_save_payload, _pickle_payload], ids=["torch-save", "raw-pickle"])
def test_resume_checkpoint_with_pickle_payload_is_refused(build, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(build(tmp_path))
    with pytest.raises(ModelFileError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: ")
    assert not (tmp_path / "marker").exists(), "a pickle payload was executed"


def test_untampered_file_loads(model_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(model_bytes)
    loaded = read_model(path)
    reference = resnet3d((16, 16, 16), 2, **TINY)
    assert loaded.class_names == ["a", "b"]
    assert {k: tuple(v.shape) for k, v in loaded.net.state_dict().items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()
    }
    assert os.path.getsize(path) == len(model_bytes)
