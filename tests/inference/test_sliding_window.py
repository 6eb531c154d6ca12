"""sliding_window_classify: exactness, window geometry, aggregation, padding, memory."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from medres3d.errors import ConfigError, DeviceError
from medres3d.inference.aggregation import aggregate_windows
from medres3d.inference.sliding_window import sliding_window_classify
from medres3d.inference.windows import WindowGrid, window_starts


def test_volume_of_input_size_equals_plain_forward(tiny_net):
    x = torch.randn(1, 8, 8, 8)
    result = sliding_window_classify(x, tiny_net)
    with torch.no_grad():
        expected = torch.softmax(tiny_net.eval()(x[None]), dim=-1)[0]
    assert result.num_windows == 1
    assert torch.equal(result.probabilities, expected)
    assert result.window_boxes.tolist() == [[[0, 8], [0, 8], [0, 8]]]


@pytest.mark.parametrize(
    ("size", "window", "overlap", "starts"),
    [
        (70, 32, 0.5, (0, 16, 32, 38)),  # step 16; the last window moved back to end at 70
        (100, 32, 0.25, (0, 24, 48, 68)),  # step int(32 * 0.75) = 24
        (33, 32, 0.0, (0, 1)),
        (32, 32, 0.9, (0,)),
        (20, 32, 0.5, (-6,)),  # smaller than the window: centred, 6 padding voxels before, 6 after
        (21, 32, 0.5, (-5,)),  # MONAI pads diff // 2 = 5 before and 6 after
        (10, 4, 0.9, tuple(range(7))),  # step int(0.4) -> 1
    ],
)
def test_window_starts_by_hand(size, window, overlap, starts):
    assert window_starts(size, window, overlap) == starts


def test_grid_matches_monai_dense_patch_slices():
    for image in itertools.product((16, 23, 40), (16, 31), (17, 50)):
        for overlap in (0.0, 0.25, 0.5, 0.75):
            window = (16, 16, 17)
            grid = WindowGrid.create(image, window, overlap)
            interval = _get_scan_interval(image, window, 3, (overlap,) * 3)
            slices = dense_patch_slices(image, window, interval)
            reference = [tuple((s.start, s.stop) for s in box) for box in slices]
            assert list(grid.boxes()) == reference
            assert [grid.box(i) for i in range(grid.num_windows)] == reference


def test_each_window_is_the_volume_cut_and_padded(tiny_net):
    torch.manual_seed(1)
    volume = torch.randn(1, 13, 6, 8) + 3.0  # axis 0 tiled by 3 windows, axis 1 padded (6 < 8)
    result = sliding_window_classify(volume, tiny_net, overlap=0.5, batch_size=2, background_value=-1.5)
    assert result.grid.shape == (3, 1, 1)
    # reference: pad the whole volume like MONAI (1 before, 1 after on axis 1), then slice
    padded = F.pad(volume, (0, 0, 1, 1), value=-1.5)
    with torch.no_grad():
        for row, start in enumerate((0, 4, 5)):
            window = padded[None, :, start : start + 8, :, :]
            expected = torch.softmax(tiny_net.eval()(window), dim=-1)[0]
            torch.testing.assert_close(result.window_probabilities[row], expected, rtol=0, atol=1e-6)
            assert result.window_boxes[row].tolist() == [[start, start + 8], [-1, 7], [0, 8]]


def test_aggregations_against_hand_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    weights = np.array([0.0, 0.5, 1.0, 0.25, 0.0], dtype=np.float32)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    def softmax(v):
        return np.exp(v) / np.exp(v).sum()

    cases = {
        ("mean", False): p.mean(axis=0),
        ("max", False): p.max(axis=0),
        ("logit-mean", False): softmax(logits.mean(axis=0)),
        ("mean", True): (p * weights[:, None]).sum(axis=0) / weights.sum(),
        ("max", True): p[weights > 0].max(axis=0),
        ("logit-mean", True): softmax((logits * weights[:, None]).sum(axis=0) / weights.sum()),
    }
    for (mode, weighted), expected in cases.items():
        got, warnings = aggregate_windows(
            torch.from_numpy(logits), mode, torch.from_numpy(weights) if weighted else None
        )
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, err_msg=f"{mode} weighted={weighted}")
        assert warnings == []


def _any_by_hand(p: np.ndarray, negative: int) -> np.ndarray:
    """The "any" rule written out: the scan is negative only if every window is."""
    p_negative = p[:, negative].min()
    maxima = {c: p[:, c].max() for c in range(p.shape[1]) if c != negative}
    total = sum(maxima.values())
    out = np.empty(p.shape[1])
    out[negative] = p_negative
    for c, m in maxima.items():
        out[c] = (1.0 - p_negative) * m / total
    return out


def test_any_aggregation_against_hand_computation():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    weights = np.array([0.0, 0.5, 1.0, 0.0, 0.25, 0.1], dtype=np.float32)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for negative in (0, 1, 2):
        got, warnings = aggregate_windows(torch.from_numpy(logits), "any", negative_class=negative)
        np.testing.assert_allclose(got.numpy(), _any_by_hand(p, negative), rtol=1e-5)
        assert got.sum().item() == pytest.approx(1.0, abs=1e-6) and warnings == []
        weighted, _ = aggregate_windows(
            torch.from_numpy(logits), "any", torch.from_numpy(weights), negative_class=negative
        )
        np.testing.assert_allclose(weighted.numpy(), _any_by_hand(p[weights > 0], negative), rtol=1e-5)


def test_any_finds_a_lesion_seen_by_few_windows_where_max_does_not():
    # a big scan: 40 confidently normal windows and 3 that see the lesion
    p_lesion = np.array([0.004] * 40 + [0.944, 0.7, 0.2])
    logits = torch.from_numpy(np.log(np.stack([1.0 - p_lesion, p_lesion], axis=1))).float()
    by_max, _ = aggregate_windows(logits, "max")
    assert by_max.tolist() == pytest.approx([0.996, 0.944], abs=1e-5)  # argmax says "normal"
    by_any, _ = aggregate_windows(logits, "any", negative_class=0)
    # two classes: p(lesion) is the lesion's maximum over windows, p(normal) the rest
    assert by_any.tolist() == pytest.approx([0.056, 0.944], abs=1e-5)
    assert int(by_any.argmax()) == 1
    with pytest.raises(ConfigError, match=r"negative_class must be a class index in \[0, 1\], got 2"):
        aggregate_windows(logits, "any", negative_class=2)


def test_all_background_weights_fall_back_to_uniform():
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    got, warnings = aggregate_windows(logits, "mean", torch.zeros(2))
    torch.testing.assert_close(got, torch.softmax(logits, dim=-1).mean(dim=0))
    assert "uniformly" in warnings[0]


def test_foreground_weights_are_fractions_of_non_background_voxels(tiny_net):
    volume = torch.zeros(1, 16, 8, 8)
    volume[0, :4] = 1.0  # foreground only in the first 4 rows of axis 0
    result = sliding_window_classify(volume, tiny_net, overlap=0.5, weight_by_foreground=True)
    expected = []
    for (a0, a1), _, _ in result.window_boxes.tolist():
        expected.append(float((volume[0, a0:a1] != 0).float().mean()))
    assert result.window_weights.tolist() == pytest.approx(expected)
    assert expected[0] == pytest.approx(0.5) and expected[-1] == 0.0
    weights = result.window_weights
    manual = (result.window_probabilities * weights[:, None]).sum(0) / weights.sum()
    torch.testing.assert_close(result.probabilities, manual)


def test_numpy_input_eval_mode_and_training_flag_restored(tiny_net):
    tiny_net.train()
    volume = np.random.default_rng(2).normal(size=(1, 12, 8, 8)).astype(np.float32)
    result = sliding_window_classify(volume, tiny_net, aggregate="logit-mean", batch_size=1)
    assert tiny_net.training
    assert result.num_windows == 2 and result.probabilities.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggregate": "median"}, "aggregate must be one of"),
        ({"overlap": 1.0}, "overlap must be in [0, 1)"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"amp": "int8"}, "amp must be"),
    ],
)
def test_bad_arguments_are_named(tiny_net, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        sliding_window_classify(torch.zeros(1, 8, 8, 8), tiny_net, **kwargs)


def test_autocast_and_channels_last_agree_with_float32(tiny_net):
    volume = torch.randn(1, 12, 10, 8)
    reference = sliding_window_classify(volume, tiny_net, amp=False)
    bf16 = sliding_window_classify(volume, tiny_net, amp="bf16")
    channels_last = sliding_window_classify(volume, tiny_net, channels_last=True)
    torch.testing.assert_close(bf16.window_logits, reference.window_logits, atol=0.05, rtol=0.05)
    torch.testing.assert_close(channels_last.probabilities, reference.probabilities, atol=1e-6, rtol=1e-5)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            sliding_window_classify(volume, tiny_net, device="cuda")


def test_channel_mismatch_is_refused(tiny_net):
    with pytest.raises(ConfigError, match="2 channels but the network expects 1"):
        sliding_window_classify(torch.zeros(2, 8, 8, 8), tiny_net)


_MEMORY_PROBE = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from inference_helpers import TinyConvNet
    from medres3d.inference.sliding_window import sliding_window_classify
    torch.set_num_threads(1)
    net = TinyConvNet(spatial_size=(32, 32, 32))
    def kib(field):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))
    for size in [(48, 48, 48), (128, 128, 112)]:
        volume = torch.randn(1, *size)
        sliding_window_classify(volume[:, :32, :32, :32], net, batch_size=2)  # warm the allocator
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the peak resident size (VmHWM) to the current one
        before = kib("VmRSS")
        result = sliding_window_classify(volume, net, overlap=0.5, batch_size=2)
        print(result.num_windows, (kib("VmHWM") - before) / 1024)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak resident size from /proc")
def test_peak_memory_does_not_grow_with_the_number_of_windows():
    code = _MEMORY_PROBE.format(tests=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    (few, small), (many, large) = [
        (int(w), float(m)) for w, m in (line.split() for line in out.stdout.splitlines())
    ]
    assert (few, many) == (8, 7 * 7 * 6)
    # 294 windows of 32^3 float32 would be 37 MiB if materialised at once (measured: +37 MiB);
    # cut batch by batch, the peak (buffers, activations) is the same for 8 or 294 windows
    assert large - small < 8.0, (small, large)
    assert large < 30.0, (small, large)
