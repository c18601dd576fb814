"""The on-disk cache on small synthetic shards (no model): layout, reading, completion, claims, merging."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.cache.folder import (
    CacheDir,
    FeatureCache,
    VideoFeatures,
    find_cache_dir,
    merge_caches,
    plan_shards,
    verify_cache,
    write_shard,
)
from diffvqa_cache.errors import CacheError
from diffvqa_cache.files import file_sha256
from diffvqa_cache.synthetic import synthetic_video, write_synthetic_cache

SMALL = dict(frames=3, crops=2, grid=4, latent_hw=8, pixel_size=16, ms_channels=(8, 8, 4, 4), shard_size=4)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("small"), 10, **SMALL).cache_dir


def test_video_features_round_trip_through_a_shard(tmp_path):
    rng = np.random.default_rng(0)
    videos = [synthetic_video(f"v{i}", rng, 3.0, 3, 2, 4, 8, 16, (8, 8, 4, 4)) for i in range(2)]
    path = tmp_path / "shards" / "shard-00000.h5"
    record = write_shard(path, 0, "fp", videos, [{"video": "bad", "reason": "x"}], ["v0", "bad", "v1"])
    assert record["videos"] == ["v0", "v1"] and record["n_frames"] == [3, 3] and record["sha256"] == file_sha256(path)
    assert json.loads(path.with_suffix(".json").read_text()) == record
    cache_dir = CacheDir(tmp_path)
    assert cache_dir.is_complete(0, ["v0", "bad", "v1"], "fp", deep=True)
    assert not cache_dir.is_complete(0, ["v0", "v1"], "fp") and not cache_dir.is_complete(0, ["v0", "bad", "v1"], "fp2")
    # the flat HDF5 names are the cache's own business: a video comes back as the structure it went in as
    flat = videos[1].flat()
    assert list(flat)[:4] == ["frame_index", "S/latent", "S/pixels", "S/ms0"] and "D/crop_origin" in flat
    again = VideoFeatures.from_flat("v1", flat)
    for a, b in zip(again.branches["D"].parts(), videos[1].branches["D"].parts()):
        np.testing.assert_array_equal(a, b)


def test_read_by_key_by_shard_and_by_selection(small):
    cache = FeatureCache(small)
    assert len(cache) == 10 and cache.keys[:2] == ["v000000", "v000001"] and cache.config.extract.crops == 2
    video = cache.read("v000005")
    assert video.frame_index.shape == (3,) and video.crop_origin.shape == (3, 2, 2)
    assert video.branches["D"].latent.shape == (3, 2, 4, 8, 8) and video.branches["S"].pixels.dtype == np.uint8
    assert [m.shape[-1] for m in video.branches["S"].ms] == [2, 4, 4, 4]  # SD's sides at latent 8, pooled to 4
    shard = cache.read_shard(cache.shard_files()[1], BranchFeatures(latent=True, ms=(None, True, None, None)), "D")
    assert list(shard.branches) == ["D"] and shard.keys == ["v000004", "v000005", "v000006", "v000007"]
    d = shard.branches["D"]
    assert d.pixels is None and d.ms[0] is None and d.ms[1].shape == (12, 2, 8, 4, 4)
    np.testing.assert_array_equal(shard.video(1).branches["D"].latent, video.branches["D"].latent)
    assert [v.key for v in cache.iter_videos()] == cache.keys


def test_part_shapes_describe_a_frame(small):
    shapes = FeatureCache(small).part_shapes()
    assert shapes["D"].latent == (2, 4, 8, 8) and shapes["S"].ms[0] == (1, 8, 2, 2) and shapes["S"].pixels == (1, 3, 16, 16)


def test_nan_features_name_the_video(small):
    cache = FeatureCache(small)
    shard = cache.read_shard(cache.shard_files()[0])
    shard.check_finite()
    shard.branches["S"].ms[2][5, 0, 1, 0, 0] = np.inf  # row 5 = the second video's third frame
    with pytest.raises(CacheError, match=r"video 'v000001' has NaN/Inf features \(S/ms2\)"):
        shard.check_finite()


def test_shards_are_claimed_by_one_live_process(tmp_path):
    cache_dir = CacheDir(tmp_path)
    cache_dir.shards.mkdir()
    assert cache_dir.claim(3) and cache_dir.claim(3)  # this process holds it
    lock = cache_dir.shard_path(3).with_suffix(".lock")
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": 1}))  # a live process (init)
    assert not cache_dir.claim(3)
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": 2 ** 22 + 7}))  # no such process
    assert cache_dir.claim(3)
    cache_dir.release(3)
    assert not lock.exists()


def test_plan_and_find(small, tmp_path):
    assert plan_shards(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert find_cache_dir(small.parents[1]) == small == find_cache_dir(small)
    with pytest.raises(CacheError, match="no such cache"):
        find_cache_dir(tmp_path / "nope")


def test_find_prefers_the_current_extraction_beside_stale_ones(small, tmp_path, capsys):
    """After an upgrade `extract` writes a new cache beside the old one: `fit --cache OUT/dataset` takes the
    current one (and says so); two current caches stay ambiguous."""
    import shutil

    out = tmp_path / "out" / "kvd"
    stale = shutil.copytree(small, out / "0000stale")
    config = json.loads((stale / "config.json").read_text())
    del config["extractor_version"]  # as 0.2 wrote it
    (stale / "config.json").write_text(json.dumps(config))
    current = shutil.copytree(small, out / "ffffcurrent")
    assert find_cache_dir(out) == current and "older extractor versions" in capsys.readouterr().err
    shutil.copytree(small, out / "other")
    with pytest.raises(CacheError, match="holds 3 caches"):
        find_cache_dir(out)


def test_merge_of_parts_equals_the_whole(small, tmp_path):
    import shutil

    parts = []
    for k in range(2):  # two job-array parts, each with every other shard
        part = tmp_path / f"part{k}" / small.name
        shutil.copytree(small, part)
        for i in range(3):
            if i % 2 != k:
                CacheDir(part).shard_path(i).unlink()
        parts.append(part)
    target, manifest = merge_caches(parts, tmp_path / "merged")
    assert manifest["complete"] and verify_cache(target) == ([], 3)
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in FeatureCache(small).manifest["shards"]]
