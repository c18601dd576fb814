"""The streamed data path: the same batches as the in-memory table, read-ahead within the budget,
damaged features named, and the data path chosen by the budget."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.errors import CacheError, UserInputError
from diffvqa_cache.files import file_sha256, write_json_atomic
from diffvqa_cache.synthetic import write_synthetic_cache
from diffvqa_cache.training.data import estimate_bytes, load_table, shard_read_bytes
from diffvqa_cache.training.rules import LoadSpec
from diffvqa_cache.training.source import choose_data_path
from diffvqa_cache.training.stream import StreamedTable

SPECS = [LoadSpec(pixel_size=8), LoadSpec(grid=2, use_pixels=False, num_frames=3),
         LoadSpec(branches="D", ms_levels=(0, 3), use_latent=False, pixel_size=16)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    made = write_synthetic_cache(tmp_path_factory.mktemp("stream"), 11, frames=4, crops=2, grid=4, latent_hw=8,
                                 pixel_size=16, ms_channels=(8, 8, 4, 4), shard_size=4)
    return FeatureCache(made.cache_dir)


def assert_same_batches(a, b):
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for branch in x:
            parts = list(zip(x[branch].parts(), y[branch].parts()))
            assert parts and all(p.dtype == q.dtype and torch.equal(p, q) for p, q in parts)


@pytest.mark.parametrize("spec", SPECS)
def test_streamed_batches_equal_the_table_batches(cache, spec):
    table, streamed = load_table(cache, spec), StreamedTable(cache, spec, budget_bytes=10**8)
    assert streamed.keys == table.keys and np.array_equal(streamed.mos, table.mos)
    assert streamed.feature_spec() == table.feature_spec() and streamed.n_crops == table.n_crops
    rng = np.random.default_rng(0)
    plan = [(rng.permutation(11)[:5], rng.integers(0, 2, (5, 1))) for _ in range(4)] + [(np.arange(3), 1)]
    assert_same_batches(table.batches(plan, "cpu"), streamed.batches(plan, "cpu"))
    # subsets (the splits) pick the same videos; crops may vary per frame
    pick = np.array([9, 2, 7, 0, 4])
    sub_plan = [(np.array([4, 0, 2]), rng.integers(0, 2, (3, table.feature_spec()["num_frames"])))]
    assert_same_batches(table.subset(pick).batches(sub_plan, "cpu"), streamed.subset(pick).batches(sub_plan, "cpu"))
    assert streamed.subset(pick).keys == [table.keys[i] for i in pick]


def test_read_ahead_stays_within_the_budget(cache, monkeypatch):
    spec = LoadSpec(pixel_size=8)
    plan = [(np.array([i, (i + 1) % 11]), 0) for i in range(6)]
    reads = []
    tiny = StreamedTable(cache, spec, budget_bytes=1)  # no room to read ahead: one batch at a time
    real = StreamedTable._read
    monkeypatch.setattr(StreamedTable, "_read", lambda self, *a: reads.append(1) or real(self, *a))
    for k, _ in enumerate(tiny.batches(plan, "cpu")):
        assert len(reads) == k + 1
    roomy = StreamedTable(cache, spec, budget_bytes=10**9)
    assert_same_batches(tiny.batches(plan, "cpu"), roomy.batches(plan, "cpu"))


def test_nan_features_are_named_when_first_read(cache, tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(cache.path, copy)
    shard = copy / "shards" / "shard-00001.h5"
    with h5py.File(shard, "r+") as f:
        key = f["keys"][1].decode()
        start = int(f["row_start"][1])
        f["D/ms2"][start, 1, 0, 0, 0] = np.inf
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][1].update(sha256=file_sha256(shard), bytes=shard.stat().st_size)
    write_json_atomic(copy / "manifest.json", manifest)
    streamed = StreamedTable(FeatureCache(copy), LoadSpec(), budget_bytes=10**8)
    i = streamed.keys.index(key)
    with pytest.raises(CacheError, match=f"video '{key}' has NaN/Inf features \\(D/ms2\\)"):
        streamed.batch(np.array([0, i]), np.array([[1, 0, 0, 0]] * 2), "cpu")


def test_the_budget_chooses_the_path(cache):
    spec = LoadSpec(pixel_size=8)
    need = estimate_bytes(cache, spec) + shard_read_bytes(cache, spec)
    assert 0 < shard_read_bytes(cache, spec) < need
    assert choose_data_path([cache], spec, "auto", need) == ("memory", need)
    assert choose_data_path([cache], spec, "auto", need - 1) == ("stream", need)
    assert choose_data_path([cache], spec, "stream", 10**12)[0] == "stream"
    with pytest.raises(UserInputError, match="data=auto"):
        choose_data_path([cache], spec, "memory", need - 1)


def test_chunked_shards_cannot_be_streamed(cache, tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(cache.path, copy)
    shard = copy / "shards" / "shard-00000.h5"
    with h5py.File(shard, "r+") as f:
        data = f["S/ms0"][:]
        del f["S/ms0"]
        f.create_dataset("S/ms0", data=data, chunks=True, compression="lzf")
    with pytest.raises(CacheError, match="S/ms0 is chunked or compressed.*data=memory"):
        StreamedTable(FeatureCache(copy), LoadSpec(), budget_bytes=10**8)



def test_streamed_familiarity_reference_equals_the_in_memory_one(cache):
    """fit's unfamiliar-content reference is the same whether the table is loaded or streamed (every crop,
    read in chunks); a different reading would flag different videos."""
    from diffvqa_cache.scoring.familiarity import block_sizes, describe, describe_videos

    spec = LoadSpec(pixel_size=8)
    table, streamed = load_table(cache, spec), StreamedTable(cache, spec, budget_bytes=10**8)
    rows = np.array([7, 1, 4, 10, 2])
    want = describe(table.branches)[rows]
    for t in (table, streamed):
        got, blocks = describe_videos(t, rows, chunk=2)
        assert blocks == block_sizes(table.branches)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
