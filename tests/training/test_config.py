"""The training config schema: every mistake is an error naming the file and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medres3d.errors import ConfigError
from medres3d.training.config import TrainConfig, load_config

MINIMAL = {"data": {"manifest": "data/manifest.csv"}, "model": {"input_size": [32, 32, 16]}}
SAMPLES = sorted((Path(__file__).parents[2] / "sample_configs").glob("*.yaml"))


def _write(tmp_path: Path, content: dict | str) -> Path:
    path = tmp_path / "sub" / "train.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def test_relative_paths_follow_the_config_file(tmp_path):
    cfg = load_config(_write(tmp_path, {**MINIMAL, "output_dir": "../runs/a"}))
    assert cfg.data.manifest == tmp_path / "sub" / "data" / "manifest.csv"
    assert cfg.output_dir == tmp_path / "runs" / "a"
    assert cfg.training.optimizer == "adamw" and cfg.training.class_weights is None


@pytest.mark.parametrize(
    ("section", "key", "suggestion"),
    [("training", "optimzer", "optimizer"), ("model", "stackdepth", "stack_depth"),
     ("data", "cach", "cache")],
)
def test_unknown_key_is_named_with_a_suggestion(tmp_path, section, key, suggestion):
    content = {**MINIMAL, section: {**MINIMAL.get(section, {}), key: 1}}
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)) and f"{section}.{key}: unknown key" in message
    assert f"did you mean {suggestion!r}" in message


def test_unknown_preprocessing_override_is_named_like_any_other_key(tmp_path):
    overrides = {"spacng": [1, 1, 1], "window": [0, 80]}
    content = {**MINIMAL, "preprocessing": {"preset": "ct", "overrides": overrides}, "training": {"epocs": 3}}
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "preprocessing.overrides.spacng: unknown key (valid keys: orientation, spacing," in message
    assert "did you mean 'spacing'?" in message
    assert "training.epocs: unknown key" in message  # reported together with the other sections' errors
    assert "overrides.window" not in message
    valid = load_config(_write(tmp_path, {**MINIMAL, "preprocessing": {"overrides": {"spacing": None}}}))
    assert valid.preprocessing.overrides == {"spacing": None}


def test_nested_unknown_key_and_unknown_section(tmp_path):
    content = {**MINIMAL, "training": {"augmentation": {"flip": {"probability": 0.5}}}, "extra": {}}
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, content))
    assert "training.augmentation.flip.probability: unknown key (valid keys: prob, axes)" in str(info.value)
    assert "extra: unknown key" in str(info.value)


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"training": {"epochs": "many"}}, "training.epochs"),
        ({"training": {"lr": -1}}, "training.lr"),
        ({"training": {"optimizer": "adam"}}, "training.optimizer"),
        ({"training": {"class_weights": "balanced"}}, "training.class_weights"),
        ({"data": {"manifest": "m.csv", "cache": "ram"}}, "data.cache"),
        ({"data": {"manifest": "m.csv", "class_names": ["a", "a"]}}, "data.class_names"),
        ({"model": {"input_size": [32, 32]}}, "model.input_size"),
        ({"model": {"input_size": [32, 32, 16], "normalization": "zcore"}}, "model.normalization"),
    ],
)
def test_wrong_values_are_named(tmp_path, patch, where):
    with pytest.raises(ConfigError, match=rf"{where}: "):
        load_config(_write(tmp_path, {**MINIMAL, **patch}))


def test_cross_field_and_file_level_errors(tmp_path):
    content = {"data": {"manifest": "m.csv", "class_names": ["a", "b"]}, "model": MINIMAL["model"],
               "training": {"class_weights": [1.0, 2.0, 3.0]}}
    with pytest.raises(ConfigError, match=r"3 entries but data\.class_names has 2"):
        load_config(_write(tmp_path, content))
    with pytest.raises(ConfigError, match="data: required key is missing"):
        load_config(_write(tmp_path, {"model": MINIMAL["model"]}))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_yaml_round_trips(tmp_path):
    content = {**MINIMAL, "training": {"schedule": "step", "class_weights": [1, 3]}}
    cfg = load_config(_write(tmp_path, content))
    again = TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml()), base_dir="/elsewhere")
    assert again == cfg  # absolute paths stay put


def test_sample_configs_are_valid():
    from medres3d.models.options import ResNet3DConfig

    assert {p.name for p in SAMPLES} >= {"matlab_resnet50.yaml", "ct_resnet18_hu_window.yaml",
                                          "mri_brain_zscore.yaml", "tiny.yaml"}
    for path in SAMPLES:
        cfg = load_config(path)
        ResNet3DConfig.create(cfg.model.input_size, 2, **cfg.model.builder_options())  # builder accepts it
        _preprocessing_spec(cfg)


def _preprocessing_spec(cfg: TrainConfig):
    from medres3d.transforms import PreprocessingSpec

    return PreprocessingSpec.preset(cfg.preprocessing.preset, **cfg.preprocessing.overrides)
