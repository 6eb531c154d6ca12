"""analyze(): MATLAB's layer/connection counts, depth names, activation sizes, learnables, FLOPs."""

from __future__ import annotations

import math

import pytest
import torch
from resnet_helpers import on_meta, tiny
from torch import nn

from medres3d.errors import MedRes3DError
from medres3d.models.analysis import analyze, count_macs

# The spec's table (MATLAB's resnet3dLayers at [224 224 64 3], 10 classes).
COUNT_TABLE = [
    ({}, 177, 192),
    ({"stack_depth": (3, 4, 23, 3)}, 347, 379),
    ({"bottleneck_type": "none"}, 127, 142),
    ({"residual_block_type": "batchnorm-after-add"}, 173, 188),
    ({"initial_pooling": "none"}, 176, 191),
    ({"bottleneck_type": "none", "stack_depth": (2, 2, 2, 2), "num_filters": (64, 128, 256, 512)}, 71, 78),
]


@pytest.mark.parametrize(
    ("options", "layers", "connections"), COUNT_TABLE,
    ids=["resnet50", "resnet101", "resnet34", "bn-after-add", "no-pooling", "basic-2222"],
)
def test_matlab_layer_and_connection_counts(options, layers, connections):
    a = analyze(on_meta(**options))
    assert (a.num_layers, a.num_connections) == (layers, connections)
    names = [info.name for info in a.layers]
    assert len(set(names)) == len(names)
    assert names[0] == "input" and names[-3:] == ["fc", "softmax", "output"]
    assert ("fc", "softmax") in a.connections and ("softmax", "output") in a.connections


@pytest.mark.parametrize(
    ("options", "name"),
    [({}, "ResNet-50"),
     ({"stack_depth": (3, 4, 23, 3)}, "ResNet-101"),
     ({"bottleneck_type": "none"}, "ResNet-34"),
     ({"stack_depth": (2, 2), "num_filters": (64, 128)}, "ResNet-14"),
     ({"bottleneck_type": "none", "stack_depth": (2, 2, 2), "num_filters": (64, 128, 256)}, "ResNet-14")],
)
def test_depth_names(options, name):
    net = on_meta(**options)
    a = analyze(net)
    assert a.name == name
    # The spec's formula, as an independent check of the graph's longest path.
    cfg = net.config
    per_block = 3 if cfg.bottleneck else 2
    assert a.depth == 1 + per_block * sum(cfg.stack_depth) + 1


def test_spatial_chain_224_to_7():
    a = analyze(on_meta())
    names = ("input", "conv1", "maxpool1", "stack1_block3_relu3", "stack2_block4_relu3",
             "stack3_block6_relu3", "stack4_block3_relu3")
    chain = [a.layer(n).output_size[0] for n in names]
    assert chain == [224, 112, 56, 56, 28, 14, 7]
    assert a.layer("input").output_size == (224, 224, 64, 3)
    assert a.layer("stack4_block3_relu3").output_size == (7, 7, 2, 2048)
    assert a.layer("gap").output_size == (1, 1, 1, 2048)
    assert a.layer("softmax").output_size == (1, 1, 1, 10) == a.layer("fc").output_size


def test_connections_follow_matlab_graph():
    edges = set(analyze(on_meta()).connections)
    assert {("input", "conv1"), ("conv1", "bn1"), ("relu1", "maxpool1"), ("maxpool1", "stack1_block1_conv1"),
            ("maxpool1", "stack1_block1_skip_conv"), ("stack1_block1_skip_bn", "stack1_block1_add"),
            ("stack1_block1_bn3", "stack1_block1_add"), ("stack1_block1_relu3", "stack1_block2_add"),
            ("stack1_block3_relu3", "stack2_block1_conv1"),
            ("stack1_block3_relu3", "stack2_block1_skip_conv"),
            ("stack4_block3_relu3", "gap"), ("gap", "fc")} <= edges
    after = set(analyze(on_meta(residual_block_type="batchnorm-after-add")).connections)
    assert {("stack2_block1_skip_conv", "stack2_block1_add"), ("stack2_block1_conv3", "stack2_block1_add"),
            ("stack2_block1_add", "stack2_block1_bn3"), ("stack2_block1_bn3", "stack2_block1_relu3")} <= after


def test_every_add_has_two_inputs_and_every_other_layer_one():
    a = analyze(on_meta(bottleneck_type="none"))
    fan_in: dict[str, int] = {}
    for _, target in a.connections:
        fan_in[target] = fan_in.get(target, 0) + 1
    for info in a.layers[1:]:
        assert fan_in[info.name] == (2 if info.kind == "add" else 1), info.name


def test_learnables_and_flops_against_independent_counts():
    net = on_meta()
    a = analyze(net)
    assert a.total_params == sum(p.numel() for p in net.parameters())
    assert sum(info.num_params for info in a.layers) == a.total_params
    assert a.layer("conv1").num_params == 64 * 3 * 7**3  # no bias, MATLAB's is frozen at zero
    assert a.layer("bn1").num_params == 2 * 64
    assert a.layer("fc").num_params == 2048 * 10 + 10
    # MACs of the stem: every output voxel of every filter reads 3 * 7^3 inputs.
    assert a.layer("conv1").macs == 112 * 112 * 32 * 64 * 3 * 7**3
    assert a.flops == 2 * a.macs == 2 * count_macs(net, (1, 3, 224, 224, 64))
    assert count_macs(nn.Conv3d(2, 4, 3, groups=2), (2, 2, 5, 5, 5)) == 2 * 27 * 4 * 1 * 27


def test_removing_a_block_changes_the_counts():
    net = on_meta()
    del net.stack3.block6
    a = analyze(net)
    assert (a.num_layers, a.num_connections, a.depth) == (167, 181, 47)
    net.stack1.block1.skip_bn = nn.Identity()  # a leaf that is not a MATLAB layer kind
    assert analyze(net).layer("stack1_block1_skip_bn").kind == "identity"


def test_a_functional_op_between_layers_is_refused():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 1, 1)
            self.fc = nn.Linear(1, 2)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(MedRes3DError, match="computed outside a module"):
        analyze(Untraceable(), input_size=(1, 1, 1, 1))


def test_analyze_does_not_touch_weights_or_statistics():
    net = tiny().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a = analyze(net)
    assert a.num_layers == 5 + 12 + 12 + 4  # stem, two projected bottleneck blocks, head
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not net.input.is_fitted


def test_table_lists_every_layer_with_sizes():
    a = analyze(tiny((32, 32, 32, 2)))
    text = str(a)
    lines = text.splitlines()
    assert lines[0].startswith(f"{a.name}: {a.num_layers} layers, {a.num_connections} connections")
    assert len(lines) == 2 + 2 + a.num_layers  # header, blank, column titles, rule, layers
    assert "32x32x32x2" in text and "stack2_block1_skip_conv" in text
    assert "7x7x7 conv, 4 filters, stride 2, pad (2,3)x(2,3)x(2,3)" in text
    assert math.isclose(float(lines[0].split(", ")[-1].split()[0]), a.flops / 1e9, abs_tol=0.01)
