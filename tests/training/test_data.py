"""Stage two's data path on small synthetic caches: selection, pooling, the memory estimate, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.cache.pooling import pool_to_grid, pooled_side
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.synthetic import write_synthetic_cache
from diffvqa_cache.training.data import estimate_bytes, load_table
from diffvqa_cache.training.rules import LoadSpec, resolve_grid_and_frames, video_tensors


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    made = write_synthetic_cache(tmp_path_factory.mktemp("data"), 9, frames=4, crops=2, grid=4, latent_hw=8,
                                 pixel_size=16, ms_channels=(8, 8, 4, 4), shard_size=4)
    return FeatureCache(made.cache_dir)


def test_one_pooling_rule():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float16).reshape(2, 3, 8, 8)
    pooled = pool_to_grid(x, 4)
    assert pooled.shape == (2, 3, 4, 4) and pooled.dtype == torch.float16
    assert float(pooled[0, 0, 0, 0]) == float(x[0, 0, :2, :2].float().mean())
    assert pool_to_grid(x, 16) is x and pool_to_grid(x, None) is x  # never upsampled
    assert [pooled_side(s, 4) for s in (2, 4, 8)] == [2, 4, 4]


@pytest.mark.parametrize("spec", [LoadSpec(pixel_size=8), LoadSpec(grid=2, use_pixels=False),
                                  LoadSpec(branches="D", ms_levels=(0, 3), use_latent=False, pixel_size=16),
                                  LoadSpec(num_frames=2, ms_levels=())])
def test_estimate_equals_what_load_table_allocates(cache, spec):
    table = load_table(cache, spec)
    assert table.nbytes() == estimate_bytes(cache, spec)


def test_load_table_selects_pools_and_keeps_labels(cache):
    spec = LoadSpec(grid=2, ms_levels=(0, 2), pixel_size=8, num_frames=2)
    table = load_table(cache, spec)
    assert table.keys == cache.keys and np.allclose(table.mos, [cache.labels[k]["mos"] for k in cache.keys])
    d = table.branches["D"]
    assert d.latent.shape == (9, 2, 2, 4, 2, 2) and d.ms[1] is None and d.ms[0].shape == (9, 2, 2, 8, 2, 2)
    assert d.pixels.shape == (9, 2, 2, 3, 8, 8) and d.pixels.dtype == torch.uint8
    # frames picked at segment centres of the 4 cached ones, maps average-pooled
    cached = cache.read(cache.keys[5]).branches["D"].ms[2]
    expect = pool_to_grid(torch.from_numpy(cached[[1, 3]]), 2)
    torch.testing.assert_close(d.ms[2][5], expect)
    assert table.feature_spec() == {"ms_channels": [8, 0, 4, 0], "latent_channels": 4, "grid": 2, "pixel_size": 8,
                                    "num_frames": 2}


def test_batches_take_one_crop_per_frame_as_float_on_the_device(cache):
    table = load_table(cache, LoadSpec(pixel_size=8))
    crop = np.array([[0, 1, 1, 0], [1, 1, 0, 0]])
    batch = table.batch(np.array([3, 7]), crop, torch.device("cpu"))
    assert isinstance(batch["D"], BranchFeatures) and batch["D"].latent.dtype == torch.float32
    assert batch["D"].latent.shape == (2, 4, 4, 4, 4) and batch["S"].pixels.dtype == torch.uint8
    torch.testing.assert_close(batch["D"].ms[3][1, 2], table.branches["D"].ms[3][7, 2, 0].float())
    torch.testing.assert_close(batch["D"].ms[3][1, 1], table.branches["D"].ms[3][7, 1, 1].float())
    sub = table.subset(np.array([7, 3]))
    assert sub.keys == [table.keys[7], table.keys[3]] and sub.n_crops == {"S": 1, "D": 2}
    assert sub.branches is table.branches  # a split's subset shares the table: a fit holds it once
    torch.testing.assert_close(sub.batch(np.array([1]), crop[:1], torch.device("cpu"))["D"].ms[3],
                               batch["D"].ms[3][:1])


def test_video_tensors_of_one_video_match_the_table(cache):
    spec = LoadSpec(pixel_size=8)
    one = video_tensors(cache.read(cache.keys[2]), spec, *resolve_grid_and_frames(cache, spec))
    table = load_table(cache, spec)
    for a, b in zip(one["S"].parts(), table.branches["S"].parts()):
        torch.testing.assert_close(a, b[2])


def test_impossible_requests_are_one_line(cache):
    with pytest.raises(UserInputError, match="finer than the cache's grid 4"):
        resolve_grid_and_frames(cache, LoadSpec(grid=8))
    with pytest.raises(UserInputError, match="ms level 4"):
        LoadSpec(ms_levels=(4,))


def test_mean_std_pooling_is_exact_and_coarsens_exactly():
    """--ms-pool mean+std: the means are `pool_to_grid`'s bit for bit, the stds each cell's population std;
    a coarser grid at load time gets the same stds as pooling the full map to it directly."""
    from diffvqa_cache.cache.pooling import pool_mean_std, pool_moments

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    both = pool_mean_std(x, 4)
    assert both.shape == (2, 6, 4, 4) and torch.equal(both[:, :3], pool_to_grid(x, 4))
    torch.testing.assert_close(both[0, 4, 1, 2], x[0, 1, 4:8, 8:12].std(unbiased=False))
    torch.testing.assert_close(pool_moments(pool_mean_std(x, 8), 4), both, atol=1e-5, rtol=1e-4)
    assert pool_moments(both, 8) is both
    small = pool_mean_std(x[..., :2, :2], 4)  # kept as it is: one pixel per cell, no spread
    assert torch.equal(small[:, :3], x[..., :2, :2]) and not small[:, 3:].any()
