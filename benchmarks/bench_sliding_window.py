"""Sliding-window classification: medres3d vs the MONAI workaround vs model-only compute.

Three ways to get one probability vector for a volume larger than the network's input, with the
same network, volume, windows (overlap 0.5) and batch size, timed alternately in one run so that
load from other processes hits all three alike:

- ``model-only``: the windows are cut before the clock starts; only ``net(batch)`` is timed. The
  floor any sliding-window classifier can reach.
- ``medres3d``: :func:`medres3d.sliding_window_classify` (cuts windows lazily, aggregates logits).
- ``monai-workaround``: ``monai.inferers.sliding_window_inference`` with a predictor that broadcasts
  each window's probabilities over the window into a (N, K, *window) map; MONAI stitches the full
  resolution (K, H, W, D) map, which is then averaged over space.

Peak memory is the growth of the peak resident set (Linux VmHWM, reset before each call) on the
CPU, or ``torch.cuda.max_memory_allocated`` on a GPU.

``--backend`` runs the network's forward pass in another backend (``torch-fused``: BatchNorm
folded; ``onnxruntime``; ``openvino``), for all three methods alike: the medres3d / model-only ratio
is then the overhead of medres3d's windows over that backend's own compute. ONNX Runtime and
OpenVINO use their own thread pools (all cores), whatever ``--threads`` says.

Usage:
    python benchmarks/bench_sliding_window.py               # CPU, a few minutes on 2 cores
    python benchmarks/bench_sliding_window.py --backend openvino --volume 192 192 144 --window 64 64 48
    python benchmarks/bench_sliding_window.py --device cuda --volume 256 256 192 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medres3d.inference.sliding_window import sliding_window_classify
from medres3d.inference.windows import WindowGrid, clip_box
from medres3d.models.resnet3d import resnet3d


def _kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def measure(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, float, float, torch.Tensor]:
    """Run ``fn`` once; return (wall seconds, CPU seconds, peak extra memory in MiB, its output)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset VmHWM to the current resident size
        base = _kib("VmRSS") * 1024
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _kib("VmHWM") * 1024
    return seconds, cpu_seconds, (peak - base) / 2**20, out


def backend_network(net: torch.nn.Module, backend: str, device: torch.device) -> torch.nn.Module:
    """``net`` as ``backend`` runs it (exported to a temporary folder for a runtime backend)."""
    import tempfile

    from medres3d.inference.backends import exported_network, read_export
    from medres3d.inference.export import export_model
    from medres3d.inference.prepare_network import prepare_network
    from medres3d.modelfile import save_model

    if backend == "torch":
        return net
    if backend == "torch-fused":
        return prepare_network(net)
    with tempfile.TemporaryDirectory() as folder:
        model = save_model(net.cpu(), f"{folder}/model.safetensors", class_names=["a", "b"])
        fmt = "onnx" if backend == "onnxruntime" else "openvino"
        export_model(model, f"{folder}/{fmt}", fmt)
        return exported_network(read_export(f"{folder}/{fmt}"), backend, device=str(device))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--volume", type=int, nargs=3, default=(112, 112, 80))
    parser.add_argument("--window", type=int, nargs=3, default=(48, 48, 32))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--filters", type=int, default=16, help="initial filters F; stages F, 2F, 4F")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: CPU time then measures work, not waiting)"
    )
    parser.add_argument("--backend", choices=("torch", "torch-fused", "onnxruntime", "openvino"),
                        default="torch", help="what runs the forward pass of each window batch")
    args = parser.parse_args()

    from monai.inferers import sliding_window_inference

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    f = args.filters
    net = resnet3d(
        (*args.window, 1),
        2,
        initial_num_filters=f,
        num_filters=(f, 2 * f, 4 * f),
        stack_depth=(1, 1, 1),
        bottleneck_type="none",
        normalization="none",
    )
    parameters = sum(p.numel() for p in net.parameters())  # a runtime backend's network holds none
    net = backend_network(net.to(device).eval(), args.backend, device)
    volume = torch.randn(1, *args.volume)
    grid = WindowGrid.create(volume.shape[1:], args.window, 0.5)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    windows = torch.stack([volume[(slice(None), *clip_box(box, grid.image_size)[0])] for box in grid.boxes()])
    windows = windows.to(device)

    def model_only() -> torch.Tensor:
        with torch.inference_mode(), autocast():
            parts = [
                net(windows[i : i + args.batch_size]).float() for i in range(0, len(windows), args.batch_size)
            ]
        return torch.softmax(torch.cat(parts), -1).mean(0)

    def ours() -> torch.Tensor:
        return sliding_window_classify(
            volume, net, batch_size=args.batch_size, overlap=0.5, device=device, amp=args.amp
        ).probabilities

    def broadcast(x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(net(x).float(), -1)
        return probabilities[:, :, None, None, None].expand(-1, -1, *x.shape[2:]).contiguous()

    def monai_workaround() -> torch.Tensor:
        with torch.inference_mode(), autocast():
            stitched = sliding_window_inference(
                volume.to(device)[None], args.window, args.batch_size, broadcast, overlap=0.5, mode="constant"
            )
        return stitched[0].float().flatten(1).mean(1).cpu()

    methods = {"model-only": model_only, "medres3d": ours, "monai-workaround": monai_workaround}
    for fn in methods.values():  # warm-up: allocator, kernels, MONAI's lazy imports
        measure(fn, device)
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu_times: dict[str, list[float]] = {name: [] for name in methods}
    memory: dict[str, list[float]] = {name: [] for name in methods}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            seconds, cpu_seconds, mib, out = measure(fn, device)
            times[name].append(seconds)
            cpu_times[name].append(cpu_seconds)
            memory[name].append(mib)
            outputs[name] = out.cpu()

    print(
        f"backend {args.backend}, device {device}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, amp {args.amp}, "
        f"filters {f}/{2 * f}/{4 * f}, {parameters} parameters"
    )
    print(
        f"volume {tuple(args.volume)}, window {tuple(args.window)}, {grid.num_windows} windows, "
        f"batch {args.batch_size}, {args.repeats} alternating repeats (median)"
    )
    print(f"{'method':<18}{'wall median':>12}{'wall min':>10}{'CPU median':>12}{'peak extra MiB':>16}")
    for name in methods:
        print(
            f"{name:<18}{statistics.median(times[name]):>12.3f}{min(times[name]):>10.3f}"
            f"{statistics.median(cpu_times[name]):>12.3f}{max(memory[name]):>16.1f}"
        )
    # on a shared machine, CPU time (with one thread) measures the work done, not the waiting
    for label, table, statistic in (
        ("wall median", times, statistics.median),
        ("wall min", times, min),
        ("CPU median", cpu_times, statistics.median),
    ):
        base, mine, monai = (statistic(table[n]) for n in methods)
        print(
            f"{label:>11}: medres3d / model-only = {mine / base:.3f} (target <= 1.05); "
            f"monai-workaround / medres3d = {monai / mine:.2f}x (target >= 1.4)"
        )
    print(
        "max |p_medres3d - p_model_only| = "
        f"{(outputs['medres3d'] - outputs['model-only']).abs().max().item():.2e}"
    )


if __name__ == "__main__":
    main()
