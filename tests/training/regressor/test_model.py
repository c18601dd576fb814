import itertools

import pytest
import torch

from diffvqa_cache.training.regressor import DiffVQARegressor, RegressorConfig

SWITCHES = list(itertools.product(["S", "D", "SD"], [True, False], [True, False], [True, False]))


@pytest.mark.parametrize("branches, use_tcab, use_tdm, use_attention", SWITCHES)
def test_every_ablation_builds_runs_and_trains(spec, config_factory, batch_factory, check_grads,
                                               branches, use_tcab, use_tdm, use_attention):
    config = config_factory(branches=branches, use_tcab=use_tcab, use_tdm=use_tdm, use_attention=use_attention)
    model = DiffVQARegressor(config, spec)
    assert set(model.branches) == set(branches)
    assert all((encoder.tcab is not None) == use_tcab for encoder in model.branches.values())
    assert (model.head.weight_mlp is not None) == (branches == "SD")
    out = model(batch_factory(batch=2, frames=3))
    assert out["score"].shape == (2,)
    assert out["frame_quality"].shape == out["frame_weight"].shape == (2, 3)
    torch.testing.assert_close(out["frame_weight"].sum(dim=1), torch.ones(2))
    out["score"].sum().backward()
    check_grads(model)


@pytest.mark.parametrize("overrides", [dict(ms_levels=(2,)), dict(ms_levels=(0, 3), use_latent=False),
                                       dict(ms_levels=(), use_latent=True)])
def test_feature_subsets(spec, config_factory, batch_factory, check_grads, overrides):
    model = DiffVQARegressor(config_factory(**overrides), spec)
    out = model(batch_factory(batch=2, frames=2))
    out["score"].sum().backward()
    check_grads(model)


@pytest.mark.parametrize("frames", [1, 3, 5])
def test_any_number_of_frames(spec, config_factory, batch_factory, frames):
    out = DiffVQARegressor(config_factory(), spec)(batch_factory(batch=1, frames=frames))
    assert out["frame_quality"].shape == (1, frames)


def test_features_head_seam_and_determinism_in_eval(spec, config_factory, batch_factory):
    model = DiffVQARegressor(config_factory(dropout=0.5), spec).eval()
    batch = batch_factory(batch=2, frames=3)
    features = model.forward_features(batch)
    assert {k: tuple(v.shape) for k, v in features.items()} == {"S": (2, 3, 24 + 16), "D": (2, 3, 24 + 16)}
    with torch.no_grad():
        first, second = model(batch), model(batch)
        seam = model.forward_head(model.forward_features(batch))
    for key in first:
        assert torch.equal(first[key], second[key]) and torch.equal(first[key], seam[key])


def test_rebuild_from_config_and_spec(spec, config_factory, batch_factory):
    model = DiffVQARegressor(config_factory(branches="D"), spec).eval()
    clone = DiffVQARegressor(RegressorConfig.from_dict(model.config.to_dict()), dict(model.feature_spec)).eval()
    clone.load_state_dict(model.state_dict(), strict=True)
    batch = batch_factory(batch=1, frames=3)
    with torch.no_grad():
        assert torch.equal(model(batch)["score"], clone(batch)["score"])


def test_bad_feature_spec(spec, config_factory):
    with pytest.raises(ValueError, match="pixel_size"):
        DiffVQARegressor(config_factory(), {k: v for k, v in spec.items() if k != "pixel_size"})
    with pytest.raises(ValueError, match="out of range"):
        DiffVQARegressor(config_factory(ms_levels=(4,)), spec)


def test_half_precision_cache_inputs(spec, config_factory, batch_factory):
    batch = batch_factory(batch=1, frames=2)
    batch = {b: v.map(lambda t: t if t.dtype == torch.uint8 else t.half()) for b, v in batch.items()}
    out = DiffVQARegressor(config_factory(), spec)(batch)
    assert out["score"].dtype == torch.float32
