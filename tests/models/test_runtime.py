"""Beyond MATLAB: memory formats, autocast, checkpointing, save/load, torch.export, ONNX, compile."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from resnet_helpers import tiny
from safetensors.torch import load_file, save_file

from medres3d.models.normalization import fit_normalization
from medres3d.models.resnet3d import resnet3d


def fitted_tiny(**options):
    net = tiny(normalization="zscore", **options)
    fit_normalization(net, [torch.randn(2, 1, 32, 32, 32) * 3 + 1])
    return net.eval()


def test_channels_last_3d_gives_the_same_logits():
    net = fitted_tiny()
    x = torch.randn(2, 1, 32, 32, 32)
    expected = net(x)
    net_cl = net.to(memory_format=torch.channels_last_3d)
    assert net_cl.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    out = net_cl(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    net = fitted_tiny()
    x = torch.randn(2, 1, 32, 32, 32)
    expected = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; compare relative to the logits' scale.
    scale = expected.abs().max().item()
    assert (out.float() - expected).abs().max().item() < 0.05 * scale


@pytest.mark.parametrize("bottleneck_type", ["downsample-first-conv", "none"])
def test_grad_checkpointing_gives_identical_gradients_and_bn_statistics(bottleneck_type):
    x = torch.randn(2, 1, 16, 16, 16)
    results = []
    for enable in (False, True):
        net = tiny((16, 16, 16), bottleneck_type=bottleneck_type).train()
        net.set_grad_checkpointing(enable)
        net(x).square().sum().backward()
        results.append(net)
    plain, ckpt = results
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    for (name, b), c in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        torch.testing.assert_close(c, b, msg=name)  # running stats updated once, not twice


def test_state_dict_round_trip_through_safetensors_keeps_weights_and_statistics(tmp_path):
    net = fitted_tiny()
    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    fresh = tiny(normalization="zscore").eval()
    assert not fresh.input.is_fitted
    fresh.load_state_dict(load_file(str(path)))
    assert fresh.input.is_fitted
    for name in ("mean", "std", "min", "max"):
        torch.testing.assert_close(getattr(fresh.input, name), getattr(net.input, name))
    x = torch.randn(1, 1, 32, 32, 32)
    torch.testing.assert_close(fresh(x), net(x))


@pytest.mark.slow
def test_torch_export_round_trip_matches_eager(tmp_path):
    # torch.export replaces TorchScript (deprecated in this torch); the exported program is what
    # ONNX (dynamo), ExecuTorch and AOTInductor consume.
    net = fitted_tiny()
    x = torch.randn(1, 1, 32, 32, 32)
    program = torch.export.export(net, (x,))
    torch.export.save(program, tmp_path / "net.pt2")
    loaded = torch.export.load(tmp_path / "net.pt2").module()
    torch.testing.assert_close(loaded(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
# The exported graph is specialized to the input size (TracerWarning), like MATLAB's fixed input layer.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                            "ignore::torch.jit.TracerWarning")
def test_onnx_export_is_valid_and_computes_the_same_logits():
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    net = fitted_tiny(initial_pooling="average")
    x = torch.randn(1, 1, 32, 32, 32)
    buffer = io.BytesIO()
    # The TorchScript-based exporter: the dynamo one needs onnxscript, which is not a dependency.
    torch.onnx.export(net, (x,), buffer, dynamo=False, input_names=["image"], output_names=["logits"])
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model, full_check=True)
    # onnxruntime is not installed; onnx's pure-Python reference evaluator runs the graph.
    (logits,) = ReferenceEvaluator(model).run(None, {"image": x.numpy()})
    np.testing.assert_allclose(logits, net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager():
    net = fitted_tiny()
    x = torch.randn(1, 1, 32, 32, 32)
    # fullgraph=True: the network must compile without a single graph break. The aot_eager
    # backend checks capture and autograd tracing without paying for C++ code generation.
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), net(x), rtol=1e-5, atol=1e-5)


def test_default_resnet50_on_meta_runs_forward_and_backward_shapes():
    with torch.device("meta"):
        net = resnet3d((224, 224, 64, 3), 10)
        out = net(torch.empty(2, 3, 224, 224, 64))
        out.sum().backward()
    assert out.shape == (2, 10)
    assert net.conv1.weight.grad.shape == net.conv1.weight.shape
