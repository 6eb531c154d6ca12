"""Input normalization: the math of each mode and the streamed statistics, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from resnet_helpers import tiny

from medres3d.errors import ConfigError, NormalizationNotFittedError
from medres3d.models.normalization import InputNormalization, fit_normalization


def ct_like_batches(seed: int = 0) -> list[np.ndarray]:
    # Two channels with very different scales; a large offset (-1000, like air in HU) is where
    # a float32 or sum-of-squares computation loses digits.
    rng = np.random.default_rng(seed)
    return [np.stack([rng.normal(-1000.0, 0.5, (n, 6, 5, 4)), rng.uniform(3, 7, (n, 6, 5, 4))], axis=1)
            for n in (3, 1, 2)]


def test_streamed_statistics_match_numpy_over_all_batches():
    batches = ct_like_batches()
    everything = np.concatenate(batches, axis=0)  # (N, C, H, W, D)
    layer = fit_normalization(InputNormalization("zscore", 2),
                              (torch.from_numpy(b.astype(np.float32)) for b in batches))
    reference = everything.astype(np.float32).astype(np.float64)  # the same float32 voxels
    axes = (0, 2, 3, 4)
    np.testing.assert_allclose(layer.mean.numpy(), reference.mean(axis=axes), rtol=1e-6)
    np.testing.assert_allclose(layer.std.numpy(), reference.std(axis=axes), rtol=1e-5)  # population std
    np.testing.assert_allclose(layer.min.numpy(), reference.min(axis=axes), rtol=1e-7)
    np.testing.assert_allclose(layer.max.numpy(), reference.max(axis=axes), rtol=1e-7)
    assert layer.is_fitted and layer.fitted.dtype == torch.bool


@pytest.mark.parametrize("mode", ["zerocenter", "zscore", "rescale-symmetric", "rescale-zero-one", "none"])
def test_each_mode_against_numpy(mode):
    batches = ct_like_batches(1)
    layer = fit_normalization(InputNormalization(mode, 2), [torch.from_numpy(b).float() for b in batches])
    x = np.concatenate(batches).astype(np.float32)  # all the data: min/max are global
    mean, std, low, high = (getattr(layer, k).numpy().reshape(1, 2, 1, 1, 1)
                            for k in ("mean", "std", "min", "max"))
    expected = {
        "zerocenter": x - mean,
        "zscore": (x - mean) / std,
        "rescale-symmetric": 2 * (x - low) / (high - low) - 1,
        "rescale-zero-one": (x - low) / (high - low),
        "none": x,
    }[mode]
    out = layer(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    if mode == "rescale-zero-one":
        assert out.min(axis=(0, 2, 3, 4)) == pytest.approx([0, 0], abs=1e-6)
        assert out.max(axis=(0, 2, 3, 4)) == pytest.approx([1, 1], abs=1e-6)


def test_constant_channel_divides_by_one_not_zero():
    layer = fit_normalization(InputNormalization("zscore", 1), [torch.full((2, 1, 3, 3, 3), 4.0)])
    assert layer.std.item() == 0
    out = layer(torch.tensor([4.0, 6.0]).reshape(1, 1, 2, 1, 1))
    assert out.flatten().tolist() == [0.0, 2.0]
    rescale = fit_normalization(InputNormalization("rescale-symmetric", 1),
                                [torch.full((1, 1, 2, 2, 2), 4.0)])
    assert rescale(torch.full((1, 1, 1, 1, 1), 4.0)).item() == -1.0


def test_unfitted_defaults_are_identity_and_require_fitted_raises():
    layer = InputNormalization("zscore", 3)
    x = torch.randn(1, 3, 2, 2, 2)
    torch.testing.assert_close(layer(x), x)
    with pytest.raises(NormalizationNotFittedError, match="fit_normalization"):
        layer.require_fitted()
    InputNormalization("none", 3).require_fitted()  # nothing to fit


def test_fit_on_network_accepts_loader_style_batches_and_sets_net_input():
    net = tiny(normalization="zscore")
    data = [(torch.full((1, 1, 32, 32, 32), v), torch.tensor([0])) for v in (1.0, 3.0)]
    assert fit_normalization(net, data) is net.input
    assert (net.input.mean.item(), net.input.std.item()) == (2.0, 1.0)
    fit_normalization(net, [{"image": torch.full((1, 1, 4, 4, 4), 5.0), "label": 1}])
    assert net.input.mean.item() == 5.0


@pytest.mark.parametrize(
    ("batches", "needle"),
    [([], "batches iterable was empty"),
     ([torch.zeros(1, 2, 4, 4, 4)], "batch 0 has shape (1, 2, 4, 4, 4); expected (N, 1, H, W, D)"),
     ([torch.zeros(1, 1, 4, 4, 4), torch.zeros(4, 4, 4)], "batch 1 has shape (4, 4, 4)"),
     ([torch.tensor([[[[[float("nan")]]]]])], "batch 0 contains NaN"),
     ([{"img": torch.zeros(1, 1, 2, 2, 2)}], "needs an 'image' entry, got keys ['img']")],
)
def test_fit_errors_name_the_batch(batches, needle):
    with pytest.raises(ConfigError) as err:
        fit_normalization(InputNormalization("zscore", 1), batches)
    assert needle in str(err.value)


def test_set_statistics_validates():
    layer = InputNormalization("zscore", 2)
    with pytest.raises(ConfigError, match="mean must have 2 values"):
        layer.set_statistics(mean=[0.0], std=[1, 1], min=[0, 0], max=[1, 1])
    with pytest.raises(ConfigError, match="std must be non-negative"):
        layer.set_statistics(mean=[0, 0], std=[1, -1], min=[0, 0], max=[1, 1])
    assert not layer.is_fitted
    with pytest.raises(ConfigError, match="normalization must be one of"):
        InputNormalization("minmax", 1)


def test_distributed_single_rank_gloo_matches_local(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    batches = [torch.from_numpy(b).float() for b in ct_like_batches(2)]
    local = fit_normalization(InputNormalization("zscore", 2), batches)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        reduced = fit_normalization(InputNormalization("zscore", 2), batches, distributed=True)
    finally:
        dist.destroy_process_group()
    for name in ("mean", "std", "min", "max"):
        torch.testing.assert_close(getattr(reduced, name), getattr(local, name))


def _fit_shard(rank: int, store: str, result: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    shards = [torch.from_numpy(b).float() for b in ct_like_batches(3)]
    layer = fit_normalization(InputNormalization("zscore", 2), shards[rank::2], distributed=True)
    torch.save({k: getattr(layer, k) for k in ("mean", "std", "min", "max")}, f"{result}.{rank}")
    dist.destroy_process_group()


def test_distributed_two_ranks_equal_the_whole_dataset(tmp_path):
    mp = pytest.importorskip("torch.multiprocessing")
    # fork: the children reuse the imported torch instead of importing it again (seconds each).
    mp.start_processes(_fit_shard, args=(str(tmp_path / "store"), str(tmp_path / "stats")), nprocs=2,
                       start_method="fork")
    whole = fit_normalization(InputNormalization("zscore", 2),
                              [torch.from_numpy(b).float() for b in ct_like_batches(3)])
    for rank in (0, 1):
        stats = torch.load(tmp_path / f"stats.{rank}")
        for name, value in stats.items():
            torch.testing.assert_close(value, getattr(whole, name))
