"""Fine-tuning (model.init_from): matching layers loaded, a new head, freezing, the source's hash."""

from __future__ import annotations

import hashlib

import pytest
import torch

from medres3d.errors import ConfigError, ModelFileError

# the network of sample_configs/tiny.yaml
TINY_YAML_MODEL = dict(initial_filter_size=3, initial_num_filters=8, initial_stride=2, bottleneck_type="none",
                       stack_depth=(1, 1), num_filters=(8, 16), normalization="zscore")


def _source(path, names=("lesion", "normal"), fitted=True, **options):
    from medres3d import fit_normalization, resnet3d, save_model

    torch.manual_seed(1)
    net = resnet3d((20, 20, 16), len(names), **{**TINY_YAML_MODEL, **options})
    if fitted:
        fit_normalization(net, [torch.randn(2, 1, 20, 20, 16) * 0.3 + 0.2])
    for module in net.modules():  # non-trivial statistics, so that a reset would show
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return save_model(net.eval(), path, class_names=list(names))


def test_loads_exactly_the_matching_layers(tmp_path):
    from medres3d import read_model, resnet3d
    from medres3d.training.finetune import file_sha256, load_pretrained

    source = _source(tmp_path / "source.safetensors")
    theirs = read_model(source).net.state_dict()
    torch.manual_seed(2)
    # 3 classes (a new head) and a wider second stack (its tensors change shape)
    net = resnet3d((20, 20, 16), 3, **{**TINY_YAML_MODEL, "num_filters": (8, 24)})
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_pretrained(net, source, ["a", "b", "c"])
    ours = net.state_dict()

    assert report.sha256 == hashlib.sha256(source.read_bytes()).hexdigest() == file_sha256(source)
    assert report.new == ["fc.weight", "fc.bias"]
    assert set(report.loaded) == {n for n in ours if n in theirs and theirs[n].shape == ours[n].shape
                                  and not n.startswith("fc.")}
    assert report.skipped["stack2.block1.conv1.weight"] == ([16, 8, 3, 3, 3], [24, 8, 3, 3, 3])
    assert set(report.loaded) | set(report.new) | set(report.skipped) == set(ours)
    for name in report.loaded:
        assert torch.equal(ours[name], theirs[name]), name
    for name in [*report.new, *report.skipped]:
        assert torch.equal(ours[name], fresh[name]), name
    assert "conv1.weight" in report.loaded and "input.mean" in report.loaded


def test_the_head_is_loaded_only_for_the_same_classes(tmp_path):
    from medres3d import read_model, resnet3d
    from medres3d.training.finetune import load_pretrained

    source = _source(tmp_path / "source.safetensors")
    theirs = read_model(source).net.state_dict()
    same = resnet3d((20, 20, 16), 2, **TINY_YAML_MODEL)
    assert load_pretrained(same, source, ["lesion", "normal"]).new == []
    assert torch.equal(same.fc.weight, theirs["fc.weight"])
    # same number of classes in another order: the outputs mean something else
    swapped = resnet3d((20, 20, 16), 2, **TINY_YAML_MODEL)
    report = load_pretrained(swapped, source, ["normal", "lesion"], normalization="refit")
    assert report.new == ["input.mean", "input.std", "input.min", "input.max", "input.fitted",
                          "fc.weight", "fc.bias"]
    assert not swapped.input.is_fitted


def test_missing_or_incompatible_sources_are_named(tmp_path):
    from medres3d import resnet3d
    from medres3d.training.finetune import load_pretrained

    net = resnet3d((20, 20, 16), 2, **TINY_YAML_MODEL)
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(ModelFileError, match=r"nowhere.safetensors.*not found"):
        load_pretrained(net, missing, ["lesion", "normal"])
    not_a_model = tmp_path / "notes.safetensors"
    not_a_model.write_text("hello")
    with pytest.raises(ModelFileError, match=r"notes.safetensors"):
        load_pretrained(net, not_a_model, ["lesion", "normal"])
    other = _source(tmp_path / "other.safetensors", initial_num_filters=4, num_filters=(4, 4),
                    initial_filter_size=5)
    with pytest.raises(ConfigError, match=r"other.safetensors: no layer of the network matches"):
        load_pretrained(net, other, ["lesion", "normal"])
    unfitted = _source(tmp_path / "unfitted.safetensors", fitted=False)
    with pytest.raises(ConfigError, match=r"unfitted.safetensors.*'keep'.*unfitted.*refit"):
        load_pretrained(net, unfitted, ["lesion", "normal"])


def test_config_refuses_freeze_without_init_from_and_bad_values(small_dataset, make_config, tmp_path):
    with pytest.raises(ConfigError, match=r"model.freeze and training.pretrained_lr_factor need model"):
        make_config(small_dataset, tmp_path, model={"freeze": 1})
    with pytest.raises(ConfigError, match=r"model.freeze"):
        make_config(small_dataset, tmp_path, model={"init_from": "m.safetensors", "freeze": 0})
    with pytest.raises(ConfigError, match=r"pretrained_lr_factor"):
        make_config(small_dataset, tmp_path, model={"init_from": "m.safetensors"}, pretrained_lr_factor=0)
    cfg = make_config(small_dataset, tmp_path, model={"init_from": "m.safetensors", "freeze": "stem"})
    assert cfg.model.init_from.is_absolute() and "init_from" not in cfg.model.builder_options()


def test_fine_tuning_run_freezes_records_the_hash_and_lowers_the_lr(small_dataset, make_config, tmp_path):
    from medres3d import read_model
    from medres3d.training import Trainer

    source = _source(tmp_path / "source.safetensors")
    before = read_model(source).net.state_dict()
    config = make_config(small_dataset, tmp_path / "run", epochs=1, pretrained_lr_factor=0.1,
                         model={"init_from": str(source), "freeze": 1},
                         data={"class_names": ["normal", "lesion"]})  # another order: a new head
    result = Trainer(config, verbose=False, progress=False).fit()
    tuned = read_model(result.model_path)
    after = tuned.net.state_dict()
    frozen = [n for n in after if n.startswith(("conv1.", "bn1.", "stack1."))]
    assert len(frozen) > 6 and any(n.startswith("stack1.") for n in frozen)
    for name in frozen:  # weights and BatchNorm statistics, population re-estimation included
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["stack2.block1.conv1.weight"], before["stack2.block1.conv1.weight"])
    assert torch.equal(after["input.mean"], before["input.mean"])  # init_normalization: keep

    provenance = tuned.training["init_from"]
    assert provenance["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert provenance["path"] == str(source) and provenance["new"] == ["fc.weight", "fc.bias"]
    assert provenance["freeze"] == 1 and provenance["pretrained_lr_factor"] == 0.1
    assert tuned.training["config"]["model"]["init_from"] == str(source)
    assert result.history[0]["lr"] == pytest.approx(0.01)  # the new layers' rate


def test_parameter_groups_give_loaded_layers_the_lower_rate(tmp_path):
    from medres3d import resnet3d
    from medres3d.training.finetune import freeze, frozen_prefixes, load_pretrained, parameter_groups

    source = _source(tmp_path / "source.safetensors")
    net = resnet3d((20, 20, 16), 3, **TINY_YAML_MODEL)
    report = load_pretrained(net, source, ["a", "b", "c"])
    freeze(net, frozen_prefixes(net, "stem"), report)
    new, pretrained = parameter_groups(net, report, 0.01, 0.1)
    params = dict(net.named_parameters())
    assert new["lr"] == 0.01
    assert {id(p) for p in new["params"]} == {id(params["fc.weight"]), id(params["fc.bias"])}
    assert pretrained["lr"] == pytest.approx(0.001)
    expected = {n for n in params if not n.startswith(("fc.", "conv1.", "bn1."))}
    assert {id(p) for p in pretrained["params"]} == {id(params[n]) for n in expected}
    with pytest.raises(ConfigError, match=r"model.freeze 3: the network has only 2 stack"):
        frozen_prefixes(net, 3)
