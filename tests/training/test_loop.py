"""The training loop and evaluation on a small in-memory table with a learnable signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.synthetic import write_synthetic_cache
from diffvqa_cache.training.data import load_table
from diffvqa_cache.training.loop import check_finite, predict_raw, train
from diffvqa_cache.training.metrics import compute_metrics_ids
from diffvqa_cache.training.regressor import DiffVQARegressor, RegressorConfig
from diffvqa_cache.training.rules import LoadSpec
from diffvqa_cache.training.settings import TrainConfig

REG = dict(use_tcab=False, dff_channels=8, fff_dim=16, head_hidden=16, dropout=0.0)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    made = write_synthetic_cache(tmp_path_factory.mktemp("train"), 48, frames=2, crops=2, grid=2, latent_hw=8,
                                 pixel_size=16, ms_channels=(8, 8, 4, 4), shard_size=16)
    return load_table(FeatureCache(made.cache_dir), LoadSpec(use_pixels=False))


def fit(table, seed=0, **cfg):
    torch.manual_seed(seed)
    model = DiffVQARegressor(RegressorConfig(**REG), table.feature_spec())
    return model, train(model, table, TrainConfig(device="cpu", **{"epochs": 12, "batch_size": 8, **cfg}), seed)


def test_learns_the_signal_and_maps_to_the_mos_scale(table):
    train_t, test_t = table.subset(np.arange(36)), table.subset(np.arange(36, 48))
    model, res = fit(train_t)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    pred = predict_raw(model, test_t, TrainConfig(), torch.device("cpu")) * res.scale[0] + res.scale[1]
    m = compute_metrics_ids(pred, test_t.mos, test_t.keys)
    assert m["srcc"] > 0.8 and abs(pred.mean() - test_t.mos.mean()) < 1.0, m


def test_same_seed_same_model(table):
    (a, _), (b, _) = fit(table, epochs=2), fit(table, epochs=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c, _ = fit(table, seed=1, epochs=2)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_early_stopping_keeps_the_best_validation_epoch(table):
    _, res = fit(table.subset(np.arange(36)), epochs=6, patience=2)
    assert res.best_epoch == 5  # no validation set: the last epoch
    model, res = fit_with_val(table)
    assert "val_srcc" in res.history[0] and res.best_epoch == int(np.argmax([h["val_srcc"] for h in res.history]))


def fit_with_val(table):
    torch.manual_seed(0)
    model = DiffVQARegressor(RegressorConfig(**REG), table.feature_spec())
    cfg = TrainConfig(device="cpu", epochs=6, batch_size=8)
    return model, train(model, table.subset(np.arange(36)), cfg, 0, val_table=table.subset(np.arange(36, 48)))


def test_evaluation_averages_the_crops(table):
    model, _ = fit(table, epochs=1)
    sub = table.subset(np.arange(4))
    per_crop = [model.eval()(sub.batch(np.arange(4), c, torch.device("cpu")))["score"].detach().numpy() for c in (0, 1)]
    np.testing.assert_allclose(predict_raw(model, sub, TrainConfig(), torch.device("cpu")), np.mean(per_crop, axis=0),
                               rtol=1e-5)


def test_non_finite_predictions_name_the_videos():
    with pytest.raises(UserInputError, match=r"videos \['b'\]"):
        check_finite(np.array([1.0, np.nan]), ["a", "b"], "split-00")


def test_weight_decay_spares_biases_norms_and_mamba_state_parameters():
    from diffvqa_cache.training.loop import param_groups

    spec = {"ms_channels": [8, 8, 4, 4], "latent_channels": 4, "grid": 2, "pixel_size": 16, "num_frames": 2}
    model = DiffVQARegressor(RegressorConfig(**{**REG, "use_tcab": True, "tcab_d_model": 8, "tcab_depth": 1}), spec)
    decay, no_decay = param_groups(model, 0.05)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    spared = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert len(spared) + len(decayed) == len(names)
    mamba = "branches.D.tcab.blocks.0.forward_mamba"
    assert {f"{mamba}.A_log", f"{mamba}.D", f"{mamba}.dt_proj.bias", "branches.D.tcab.pos_spatial",
            "branches.D.tcab.norm.weight", "branches.D.dff.fuse.1.weight", "head.quality_mlp.0.bias"} <= spared
    assert {f"{mamba}.in_proj.weight", f"{mamba}.conv1d.weight", "branches.D.dff.fuse.0.weight",
            "head.quality_mlp.0.weight"} <= decayed
