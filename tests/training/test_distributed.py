"""Data-parallel training under torchrun: two CPU processes (gloo) end with identical weights."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml

from medres3d.io.readers import load_volume
from medres3d.modelfile import read_model
from medres3d.training.trainer import weights_sha256
from medres3d.transforms import preprocess


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes(small_dataset, tmp_path, make_config):
    cfg = make_config(small_dataset, tmp_path / "run", epochs=2, device="cpu", population_bn_stats=True)
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(cfg.to_yaml())
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "medres3d.cli", "train", str(config_path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("model: ") == 1  # only rank 0 reports

    model = read_model(tmp_path / "run" / "model.safetensors")
    provenance = model.training
    assert provenance["world_size"] == 2
    first, second = provenance["rank_weights_sha256"]
    assert first == second == weights_sha256(model.net)
    assert len(provenance["history"]) == 2 and provenance["final_metrics"]["val_accuracy"] is not None

    # statistics all-reduced over both ranks' shards equal numpy over the whole training split
    with open(small_dataset, newline="") as handle:
        train = [r for r in csv.DictReader(handle) if r["split"] == "train"]
    voxels = np.concatenate([
        preprocess(load_volume(small_dataset.parent / r["path"]), model.preprocessing).numpy().ravel()
        for r in train]).astype(np.float64)
    for name, reference in (("mean", voxels.mean()), ("std", voxels.std()), ("min", voxels.min()),
                            ("max", voxels.max())):
        value = getattr(model.net.input, name).item()
        assert abs(value - reference) <= np.spacing(np.float32(reference)), name
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["training"]["epochs"] == 2


def _average_on_rank(rank: int, store: str, result: str) -> None:
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist

    from medres3d.models.resnet3d import resnet3d
    from medres3d.training import Trainer
    from medres3d.training.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=3)
    torch.manual_seed(0)
    net = resnet3d((8, 8, 8), 2, initial_num_filters=4, stack_depth=(1,), num_filters=(4,),
                   normalization="zscore")
    # identical input statistics on every rank (as fit_normalization leaves them), rank-specific BN
    net.input.set_statistics(mean=[0.1], std=[0.3], min=[-0.7], max=[0.9])
    net.bn1.running_mean.fill_(float(rank))
    nothing_frozen = SimpleNamespace(_frozen=())  # the only Trainer state _average_buffers reads
    Trainer._average_buffers(nothing_frozen, net, DistContext(rank, 3, rank, torch.device("cpu")))
    torch.save({"input": {k: getattr(net.input, k) for k in ("mean", "std", "min", "max")},
                "bn1": net.bn1.running_mean}, f"{result}.{rank}")
    dist.destroy_process_group()


def test_buffer_averaging_keeps_input_statistics_bit_exact_on_three_ranks(tmp_path):
    import torch
    import torch.multiprocessing as mp

    mp.start_processes(_average_on_rank, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=3,
                       start_method="fork")
    for rank in range(3):
        out = torch.load(tmp_path / f"out.{rank}")
        assert torch.equal(out["bn1"], torch.full((4,), 1.0))  # (0 + 1 + 2) / 3
        # (3 * x) / 3 is not x in float32 for about one value in seven: the statistics must not be averaged
        for name, value in (("mean", 0.1), ("std", 0.3), ("min", -0.7), ("max", 0.9)):
            assert torch.equal(out["input"][name], torch.tensor([value], dtype=torch.float32)), name


@pytest.mark.slow
def test_torchrun_cross_validation_two_processes(small_dataset, tmp_path, make_config):
    """``torchrun ... train CONFIG --folds 2``: the folds one after another on both ranks, one summary."""
    rows = small_dataset.read_text().splitlines()[1:]
    # no split column (CV folds every row); one patient per scan, absolute paths
    grouped = tmp_path / "grouped.csv"
    grouped.write_text("path,label,group\n" + "".join(
        f"{small_dataset.parent / line.split(',')[0]},{line.split(',')[1]},p{i}\n"
        for i, line in enumerate(r for r in rows if r)))
    cfg = make_config(grouped, tmp_path / "cv", epochs=1, device="cpu")
    config_path = tmp_path / "cv.yaml"
    config_path.write_text(cfg.to_yaml())
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "medres3d.cli", "train", str(config_path), "--folds", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("2-fold cross-validation") == 1  # only rank 0 writes the summary
    for fold in (1, 2):
        model = read_model(tmp_path / "cv" / f"fold_{fold}" / "model.safetensors")
        assert model.training["world_size"] == 2
        first, second = model.training["rank_weights_sha256"]
        assert first == second == weights_sha256(model.net)
    with open(tmp_path / "cv" / "oof_predictions.csv", newline="") as handle:
        oof = list(csv.DictReader(handle))
    assert len(oof) == len([r for r in rows if r]) and {r["fold"] for r in oof} == {"1", "2"}
    assert (tmp_path / "cv" / "cv_summary.json").is_file()
