"""The one way to read features: both tables are `FeatureSource`s described by the same `FeatureSpec`,
and `open_features` chooses memory or streaming for the caches together, within one budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.synthetic import write_synthetic_cache
from diffvqa_cache.training.data import VideoTable, estimate_bytes, load_table, shard_read_bytes
from diffvqa_cache.training.regressor import DiffVQARegressor, RegressorConfig
from diffvqa_cache.training.rules import FeatureSpec, LoadSpec, feature_spec
from diffvqa_cache.training.source import (
    DataPlan,
    FeatureSource,
    OpenedFeatures,
    open_features,
    plan_features,
)
from diffvqa_cache.training.stream import StreamedTable

SPECS = [LoadSpec(pixel_size=8), LoadSpec(grid=2, use_pixels=False, num_frames=3),
         LoadSpec(branches="D", ms_levels=(0, 3), use_latent=False, pixel_size=16),
         LoadSpec(grid=2, latent_grid=4, ms_levels=(1,), use_pixels=False)]


def make_cache(root, n=7, seed=0):
    return FeatureCache(write_synthetic_cache(root, n, frames=4, crops=2, grid=4, latent_hw=8, pixel_size=16,
                                              ms_channels=(8, 8, 4, 4), shard_size=3, seed=seed).cache_dir)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("source"))


def described_by_the_tensors(table: VideoTable, spec: LoadSpec) -> dict:
    """What the loaded tensors are, read off their shapes (N, T, K, C, h, w)."""
    v = table.branches[spec.branches[0]]
    maps = [m for m in (v.latent, *v.ms) if m is not None]
    ms_sides = [int(m.shape[-1]) for m in v.ms if m is not None]
    out = {"ms_channels": [0 if m is None else int(m.shape[3]) for m in v.ms], "latent_channels": 4,
           "grid": max(ms_sides + ([int(v.latent.shape[-1])] if v.latent is not None and
                                   (spec.latent_grid is None or not ms_sides) else [])),
           "pixel_size": 0 if v.pixels is None else int(v.pixels.shape[-1]), "num_frames": int(maps[0].shape[1])}
    if spec.latent_grid is not None and v.latent is not None:
        out["latent_grid"] = int(v.latent.shape[-1])
    return out


@pytest.mark.parametrize("spec", SPECS)
def test_the_spec_from_the_cached_shapes_is_what_both_tables_hold(cache, spec):
    table, streamed = load_table(cache, spec), StreamedTable(cache, spec, budget_bytes=10**8)
    assert isinstance(table, FeatureSource) and isinstance(streamed, FeatureSource)
    described = feature_spec(cache, spec)
    assert isinstance(described, FeatureSpec)
    assert described == described_by_the_tensors(table, spec)  # the description matches the data loaded
    assert table.feature_spec() == streamed.feature_spec() == described
    assert table.subset(np.array([2, 0])).feature_spec() is table.feature_spec()  # described once, shared


def test_feature_spec_is_typed_and_saved_as_the_mapping_runs_hold():
    plain = FeatureSpec.describe([(8, 4), None, (4, 2), None], 4, 16, 3)
    assert plain.grid == 4 and plain.ms_channels == (8, 0, 4, 0) and plain.latent_grid is None
    saved = plain.to_dict()
    assert saved == {"ms_channels": [8, 0, 4, 0], "latent_channels": 4, "grid": 4, "pixel_size": 16, "num_frames": 3}
    assert plain == saved and saved == plain and plain["grid"] == 4 and "latent_grid" not in plain
    assert FeatureSpec.from_dict(saved) == plain and dict(plain) == saved
    own = FeatureSpec.describe([(8, 2), None, None, None], 8, 0, 3, latent_grid=8)
    assert own.grid == 2 and own["latent_grid"] == 8 and FeatureSpec.from_dict(own.to_dict()) == own
    with pytest.raises(UserInputError, match="grid"):
        FeatureSpec.from_dict({"ms_channels": [8, 0, 0, 0], "latent_channels": 4})  # a damaged record
    model = DiffVQARegressor(RegressorConfig(use_tcab=False, ms_levels=(0, 2), dff_channels=8, fff_dim=16), plain)
    assert model.feature_spec == saved  # checkpoints keep the plain mapping


def test_open_features_keeps_what_fits_in_memory_and_streams_the_rest(cache):
    spec = LoadSpec(pixel_size=8)
    need = estimate_bytes(cache, spec) + shard_read_bytes(cache, spec)
    roomy = open_features([cache], spec, "auto", need / 1e9, "cpu")
    assert isinstance(roomy, OpenedFeatures) and isinstance(roomy.sources[0], VideoTable)
    assert roomy.plan == DataPlan("memory", need, need / 1e9)
    assert roomy.record() == {"path": "memory", "budget_gb": need / 1e9, "need_gb": round(need / 1e9, 3),
                              "device": "cpu"}
    tight = open_features([cache], spec, "auto", (need - 1) / 1e9)
    assert isinstance(tight.sources[0], StreamedTable) and tight.plan.path == "stream"
    assert tight.sources[0].budget_bytes == tight.plan.budget_bytes == need - 1
    assert tight.record()["device"] == "cpu (streamed)"
    plan = [(np.array([5, 1, 3]), np.array([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1]]))]
    for x, y in zip(roomy.sources[0].batches(plan, "cpu"), tight.sources[0].batches(plan, "cpu")):
        assert all(torch.equal(p, q) for b in x for p, q in zip(x[b].parts(), y[b].parts()))
    assert isinstance(open_features([cache], spec, "stream", 100.0).sources[0], StreamedTable)
    with pytest.raises(UserInputError, match="memory_gb"):
        open_features([cache], spec, "memory", (need - 1) / 1e9)
    with pytest.raises(UserInputError, match="data must be one of"):
        plan_features([cache], spec, "disk", 1.0)


def test_caches_opened_together_share_one_budget(cache, tmp_path):
    other = make_cache(tmp_path, n=5, seed=1)
    spec = LoadSpec(use_pixels=False)
    alone = plan_features([cache], spec, "auto", 10.0).need_bytes
    both = plan_features([cache, other], spec, "auto", 10.0)
    assert both.need_bytes == estimate_bytes(cache, spec) + estimate_bytes(other, spec) + max(
        shard_read_bytes(cache, spec), shard_read_bytes(other, spec)) > alone
    opened = open_features([cache, other], spec, "auto", alone / 1e9)  # room for the first alone, not both
    assert opened.plan.path == "stream" and [len(s) for s in opened.sources] == [7, 5]
    assert all(isinstance(s, StreamedTable) for s in opened.sources)
    assert opened.sources[1].keys == other.keys
