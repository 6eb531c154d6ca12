"""Fixtures of the training tests: tiny networks and tiny synthetic datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = dict(initial_num_filters=4, num_filters=(4, 8), stack_depth=(1, 1), initial_stride=1)


@pytest.fixture
def tiny_options() -> dict:
    """Builder options of a network small enough to train in seconds on a CPU."""
    return dict(TINY)


@pytest.fixture
def tiny_net():
    """A fitted tiny network whose BatchNorm statistics moved away from their initial values."""
    import torch

    from medres3d import fit_normalization, resnet3d

    torch.manual_seed(0)
    net = resnet3d((16, 16, 8), 2, normalization="zscore", **TINY)
    batches = [torch.randn(2, 1, 16, 16, 8) * 3 + 5 for _ in range(2)]
    fit_normalization(net, batches)
    net.train()
    with torch.no_grad():
        net(batches[0])
    return net.eval()


TINY_YAML = Path(__file__).parents[2] / "sample_configs" / "tiny.yaml"


def tiny_config(manifest: Path, output_dir: Path, *, model: dict | None = None, data: dict | None = None,
                preprocessing: dict | None = None, **training):
    """sample_configs/tiny.yaml with its data and output redirected and some options replaced."""
    import yaml

    from medres3d.training.config import TrainConfig

    raw = yaml.safe_load(TINY_YAML.read_text())
    raw["data"].update({"manifest": str(manifest), **(data or {})})
    raw["model"].update(model or {})
    raw["preprocessing"]["overrides"].update(preprocessing or {})
    raw["training"].update(training)
    raw["output_dir"] = str(output_dir)
    return TrainConfig.from_dict(raw)


def _combine(root: Path, parts: list[Path]) -> Path:
    """One manifest over several phantom data sets written under ``root``."""
    lines = ["path,label,split"]
    for manifest in parts:
        rows = manifest.read_text().splitlines()[1:]
        lines += [f"{manifest.parent.name}/{row}" for row in rows if row]
    path = root / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def lesion_dataset(tmp_path_factory) -> Path:
    """32 CT phantoms (half with a bright lesion), 16 as NIfTI and 16 as DICOM series; 20 train, 12 val."""
    from medres3d.synthetic import make_phantom_dataset

    root = tmp_path_factory.mktemp("lesions")
    common = dict(shape=(20, 20, 16), spacing=(2.5, 2.5, 2.5), split_fractions=(0.625, 0.375, 0.0),
                  lesion_contrast=(300.0, 400.0), lesion_radius_mm=(5.0, 7.0))
    parts = [make_phantom_dataset(root / "nifti", 16, file_format="nifti", seed=1, **common),
             make_phantom_dataset(root / "dicom", 16, file_format="dicom", seed=2, **common)]
    return _combine(root, parts)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """8 small CT phantoms of different sizes (some smaller than the 20x20x16 input), 6 train, 2 val."""
    from medres3d.synthetic import make_phantom_dataset

    root = tmp_path_factory.mktemp("small")
    return make_phantom_dataset(root, 8, shape=(20, 20, 16), spacing=(2.5, 2.5, 2.5), size_jitter=0.3,
                                split_fractions=(0.75, 0.25, 0.0), lesion_contrast=(300.0, 400.0), seed=5)


@pytest.fixture(scope="session")
def make_config():
    """:func:`tiny_config`, for tests (conftest modules cannot be imported by name)."""
    return tiny_config
