"""Forward and training-step throughput: medres3d ResNet-50 vs MONAI's resnet50, on one input.

The networks are timed alternately (A, B, A, B, ...) in one process and the median of each is
reported, so a machine loaded by other jobs slows both alike. MONAI's ``resnet50`` has a
stride-1 stem by default (8x the activations of MATLAB's stride-2 stem) and strides in its
3x3x3 convolutions, so it does several times the FLOPs of MATLAB's ResNet-50: the ratios are
given per sample and per FLOP. ``monai-stride2`` (``conv1_t_stride=2``) is MONAI's network with
the same stem stride as MATLAB's, the closest like-for-like comparison.

With ``--backends`` the medres3d network's forward pass is timed in each inference backend
instead (``torch``: eager; ``torch-fused``: BatchNorm folded; ``torch-fused-cl``: folded and
channels-last-3d; ``torch-bf16``: folded, bf16 autocast; ``onnxruntime``; ``openvino``;
``openvino-bf16``), alternated with MONAI's ``resnet50(conv1_t_stride=2)`` in eager PyTorch, with
the largest probability difference of each against PyTorch fp32.

Usage:
    python benchmarks/bench_model.py                       # CPU fp32, 1x64^3, batch 2
    python benchmarks/bench_model.py --device cuda --amp bf16 --channels-last --size 128 --batch 8
    python benchmarks/bench_model.py --backends torch,torch-fused,onnxruntime,openvino --no-train
    python benchmarks/bench_model.py --backends torch,torch-fused,onnxruntime,openvino --network small \
        --size 48 --batch 8

Example output line:
    medres3d      forward 0.412 s (4.9 samples/s, 10.3 GFLOP/s) | train step 1.30 s (1.5 samples/s)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def build_models(num_classes: int, size: int, which: list[str]) -> dict[str, nn.Module]:
    from monai.networks.nets import resnet50

    from medres3d.models.resnet3d import resnet3d

    builders: dict[str, Callable[[], nn.Module]] = {
        # normalization="none": MONAI has no input layer; the zero-centering would cost ~0.1%.
        "medres3d": lambda: resnet3d((size, size, size, 1), num_classes, normalization="none"),
        "monai": lambda: resnet50(spatial_dims=3, n_input_channels=1, num_classes=num_classes),
        "monai-stride2": lambda: resnet50(spatial_dims=3, n_input_channels=1, num_classes=num_classes,
                                          conv1_t_stride=2),
    }
    torch.manual_seed(0)
    return {name: builders[name]() for name in which}


def build_small(num_classes: int, size: int) -> nn.Module:
    """The small network of the backend comparison: stem, three stages of one basic block (16/32/64)."""
    from medres3d.models.resnet3d import resnet3d

    return resnet3d((size, size, size, 1), num_classes, initial_num_filters=16, num_filters=(16, 32, 64),
                    stack_depth=(1, 1, 1), bottleneck_type="none", normalization="none")


def backend_forwards(names: list[str], net: nn.Module, device: torch.device,
                     folder: str) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> a function from an input batch to logits, one per backend (exported into ``folder``)."""
    from medres3d.inference.backends import exported_network, read_export
    from medres3d.inference.export import export_model
    from medres3d.inference.prepare_network import prepare_network
    from medres3d.modelfile import save_model

    net = net.to(device).eval()
    exports: dict[str, str] = {}

    def exported(fmt: str) -> str:
        if fmt not in exports:
            model = save_model(net.cpu(), f"{folder}/model.safetensors",
                               class_names=[f"c{i}" for i in range(net.num_classes)])
            net.to(device)
            export_model(model, f"{folder}/{fmt}", fmt)
            exports[fmt] = f"{folder}/{fmt}"
        return exports[fmt]

    def autocast_run(module: nn.Module, dtype: torch.dtype | None, channels_last: bool = False):
        def run(x: torch.Tensor) -> torch.Tensor:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                return module(x).float()
        return run

    forwards: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for name in names:
        if name == "torch":
            forwards[name] = autocast_run(net, None)
        elif name == "torch-fused":
            forwards[name] = autocast_run(prepare_network(net), None)
        elif name == "torch-fused-cl":
            forwards[name] = autocast_run(prepare_network(net, channels_last=True), None, channels_last=True)
        elif name == "torch-bf16":
            forwards[name] = autocast_run(prepare_network(net), torch.bfloat16)
        elif name == "torch-compile":
            forwards[name] = autocast_run(prepare_network(net, compile=True), None)
        elif name in ("onnxruntime", "openvino", "openvino-bf16"):
            backend = name.split("-")[0]
            fmt = "onnx" if backend == "onnxruntime" else "openvino"
            runtime = exported_network(read_export(exported(fmt)), backend, device=str(device),
                                       precision="bf16" if name.endswith("bf16") else "fp32")
            forwards[name] = lambda x, runtime=runtime: runtime(x.cpu())
        else:
            raise SystemExit(f"unknown backend {name!r}")
    return forwards


def run_backends(args: argparse.Namespace) -> None:
    """Forward throughput of medres3d in each backend against MONAI eager, alternated in one run."""
    import tempfile

    from monai.networks.nets import resnet50

    from medres3d.models.analysis import count_macs

    device = torch.device(args.device)
    torch.manual_seed(0)
    net = (build_small(args.classes, args.size) if args.network == "small"
           else build_models(args.classes, args.size, ["medres3d"])["medres3d"])
    for module in net.modules():  # trained-looking BatchNorm statistics, so folding has work to do
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():  # logits of a few units, as a trained network gives: probabilities not saturated
        net.eval()
        net.fc.weight.mul_(3.0 / net(torch.randn(2, 1, args.size, args.size, args.size)).abs().max())
        net.fc.bias.zero_()
    monai = resnet50(spatial_dims=3, n_input_channels=1, num_classes=args.classes, conv1_t_stride=2)
    monai = monai.to(device).eval()
    shape = (args.batch, 1, args.size, args.size, args.size)
    x = torch.randn(shape, device=device)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        forwards = backend_forwards(args.backends.split(","), net, device, folder)
        setup = time.perf_counter() - start

        def monai_forward(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return monai(batch)

        forwards = {"monai-stride2 (eager)": monai_forward, **forwards}
        times: dict[str, list[float]] = {name: [] for name in forwards}
        outputs: dict[str, torch.Tensor] = {}
        for repeat in range(args.warmup + args.repeats):
            for name, forward in forwards.items():  # alternated inside every repetition
                synchronize(device)
                start = time.perf_counter()
                out = forward(x)
                synchronize(device)
                if repeat >= args.warmup:
                    times[name].append(time.perf_counter() - start)
                outputs[name] = out.float().cpu()
    flops = {name: 2 * count_macs(module, shape) / args.batch
             for name, module in (("medres3d", net), ("monai", monai))}
    print(f"{args.network} input {shape}, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} alternated repetitions "
          f"({args.warmup} warm-up), export and load {setup:.1f} s; GFLOPs/sample medres3d "
          f"{flops['medres3d'] / 1e9:.2f}, MONAI {flops['monai'] / 1e9:.2f}")
    base = statistics.median(times["monai-stride2 (eager)"])
    reference = torch.softmax(outputs["torch"], -1) if "torch" in outputs else None
    print(f"{'backend':<24}{'median s':>10}{'min s':>9}{'samples/s':>11}{'x MONAI':>9}{'x torch':>9}"
          f"{'max |dp| vs torch':>19}")
    for name, values in times.items():
        median = statistics.median(values)
        versus_torch = (statistics.median(times["torch"]) / median) if "torch" in times else float("nan")
        diff = "" if reference is None or name.startswith("monai") else (
            f"{(torch.softmax(outputs[name], -1) - reference).abs().max().item():.1e}")
        print(f"{name:<24}{median:>10.3f}{min(values):>9.3f}{args.batch / median:>11.2f}{base / median:>9.2f}"
              f"{versus_torch:>9.2f}{diff:>19}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    parser.add_argument("--channels-last", action="store_true",
                        help="torch.channels_last_3d for weights and input")
    parser.add_argument("--size", type=int, default=64, help="cube side of the 1-channel input (default 64)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per model (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions per model first")
    parser.add_argument("--models", default="medres3d,monai,monai-stride2",
                        help="comma-separated subset of medres3d, monai, monai-stride2")
    parser.add_argument("--no-train", action="store_true", help="time the forward pass only")
    parser.add_argument("--backends", default=None,
                        help="compare inference backends instead: comma-separated torch, torch-fused, "
                             "torch-fused-cl, torch-bf16, torch-compile, onnxruntime, openvino, "
                             "openvino-bf16")
    parser.add_argument("--network", choices=("resnet50", "small"), default="resnet50",
                        help="with --backends: MATLAB's ResNet-50 or the small network (16/32/64 filters)")
    args = parser.parse_args()
    if args.backends:
        run_backends(args)
        return

    from medres3d.models.analysis import count_macs

    device = torch.device(args.device)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    memory_format = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    shape = (args.batch, 1, args.size, args.size, args.size)
    models = build_models(args.classes, args.size, args.models.split(","))
    flops = {name: 2 * count_macs(model, shape) / args.batch for name, model in models.items()}
    x = torch.randn(shape, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    optimizers = {}
    for name, model in models.items():
        model.to(device=device, memory_format=memory_format)
        optimizers[name] = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    def forward(name: str) -> float:
        model = models[name].eval()
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode(), autocast():
            model(x)
        synchronize(device)
        return time.perf_counter() - start

    def train_step(name: str) -> float:
        model, optimizer = models[name].train(), optimizers[name]
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        synchronize(device)
        return time.perf_counter() - start

    phases = {"forward": forward} if args.no_train else {"forward": forward, "train step": train_step}
    times: dict[tuple[str, str], list[float]] = {(n, p): [] for n in models for p in phases}
    for repeat in range(args.warmup + args.repeats):
        for phase, run in phases.items():
            for name in models:  # alternate the models inside every repetition
                elapsed = run(name)
                if repeat >= args.warmup:
                    times[(name, phase)].append(elapsed)

    print(f"input {shape}, device {device}, amp {args.amp}, channels_last {args.channels_last}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} alternated repetitions")
    medians = {key: statistics.median(values) for key, values in times.items()}
    for name in models:
        cells = [f"{name:14s} {flops[name] / 1e9:7.2f} GFLOPs/sample"]
        for phase in phases:
            seconds = medians[(name, phase)]
            # A training step is ~3x the forward FLOPs (forward + two backward products).
            work = flops[name] * args.batch * (1 if phase == "forward" else 3)
            cells.append(f"{phase} {seconds:.3f} s ({args.batch / seconds:.2f} samples/s, "
                         f"{work / seconds / 1e9:.1f} GFLOP/s)")
        print(" | ".join(cells))
    if "medres3d" in models:
        for other in (n for n in models if n != "medres3d"):
            for phase in phases:
                speed = medians[(other, phase)] / medians[("medres3d", phase)]
                per_flop = speed * flops["medres3d"] / flops[other]
                print(f"medres3d vs {other}, {phase}: {speed:.2f}x samples/s, {per_flop:.2f}x FLOP/s")


if __name__ == "__main__":
    main()
