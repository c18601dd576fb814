"""Fitting one split (`fit_split`) and scoring cached videos with a fitted run (`score_cached`), on a tiny
synthetic cache (no model, TCAB off): what the entry and the rows hold, seeds, named test tables, and the
cached scores agreeing with the run's own predictions."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.scoring.cached import score_cached, score_cached_per_model
from diffvqa_cache.synthetic import write_synthetic_cache
from diffvqa_cache.training.data import load_table
from diffvqa_cache.training.fitting import fit_split
from diffvqa_cache.training.protocols import Split
from diffvqa_cache.training.settings import FitConfig

CPU = torch.device("cpu")  # fit_split takes a torch.device
SMALL = {"regressor.dff_channels": 8, "regressor.fff_dim": 16, "regressor.head_hidden": 16,
         "regressor.use_tcab": False, "train.epochs": 2, "train.batch_size": 8, "splits": 2}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("fitting"), 24, frames=4, crops=2, grid=4, latent_hw=8,
                                 pixel_size=16, ms_channels=(8, 8, 4, 4), shard_size=8).cache_dir


@pytest.fixture(scope="module")
def table(cache_dir):
    cache = FeatureCache(cache_dir)
    return load_table(cache, FitConfig().with_overrides(SMALL).load_spec(cache.config.pixel_size))


@pytest.fixture(scope="module")
def cfg():
    return FitConfig().with_overrides(SMALL)


def _split(keys: list[str]) -> Split:
    return Split("s0", train=keys[:18], test={"test": keys[18:]})


def test_fit_split_trains_on_the_train_videos_and_scores_each_test_video(table, cfg):
    keys = list(table.keys)
    fitted = fit_split(table, _split(keys), cfg, seed=0, device=CPU)
    e = fitted.entry
    assert (e["split"], e["n_train"], e["n_val"]) == ("s0", 18, 0)
    assert 1 <= e["best_epoch"] <= 2 and len(fitted.result.history) == 2
    assert {"srcc", "plcc", "krcc", "rmse"} <= set(e["test"])
    mos = dict(zip(table.keys, table.mos))
    assert [r[0] for r in fitted.rows] == keys[18:]  # (video, mos, prediction on the MOS scale, split, test set)
    for video, y, pred, split, test in fitted.rows:
        assert y == pytest.approx(float(mos[video])) and np.isfinite(pred) and (split, test) == ("s0", "test")


def test_fit_split_is_seeded_and_carves_validation_from_the_train_videos(table, cfg):
    split = _split(list(table.keys))
    a = fit_split(table, split, cfg, seed=3, device=CPU)
    b = fit_split(table, split, cfg, seed=3, device=CPU)
    c = fit_split(table, split, cfg, seed=4, device=CPU)
    assert [r[2] for r in a.rows] == [r[2] for r in b.rows]
    assert [r[2] for r in a.rows] != [r[2] for r in c.rows]
    val = fit_split(table, split, cfg.with_overrides({"train.val_fraction": 0.25}), seed=3, device=CPU)
    assert val.entry["n_train"] + val.entry["n_val"] == 18 and val.entry["n_val"] > 0
    assert [r[0] for r in val.rows] == list(table.keys)[18:]  # the test set is untouched


def test_fit_split_reads_a_named_test_set_from_its_own_table(table, cfg):
    keys = list(table.keys)
    other = table.subset(np.arange(23, 15, -1))  # stands for a test cache: its own table, its own row order
    split = Split("s0", train=keys[:16], test={"test": keys[16:20], "other": keys[20:]})
    fitted = fit_split(table, split, cfg, seed=0, test_tables={"other": other}, device=CPU)
    assert {"test", "other"} <= set(fitted.entry)
    assert [(r[0], r[4]) for r in fitted.rows] == [(k, "test") for k in keys[16:20]] + [(k, "other") for k in keys[20:]]


@pytest.fixture(scope="module")
def run_dir(cache_dir, tmp_path_factory):
    from pipelines.fit import run_fit

    out = tmp_path_factory.mktemp("fitting-run") / "run"
    run_fit(cache_dir, out, FitConfig().with_overrides(SMALL), progress=False)
    return out


def test_score_cached_gives_each_split_models_prediction_and_their_mean(run_dir, cache_dir):
    keys, per_model = score_cached_per_model(run_dir, cache_dir, device="cpu")
    assert per_model.shape == (2, 24) and sorted(keys) == sorted(FeatureCache(cache_dir).keys)
    with open(run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    column = {k: i for i, k in enumerate(keys)}
    for row in rows:  # fit's prediction of a test video is that split's model (models/split-NN) on it
        model = int(row["split"].rsplit("-", 1)[1])  # split-00 -> 0
        assert per_model[model, column[row["video"]]] == pytest.approx(float(row["pred"]), abs=1e-4)
    scores = score_cached(run_dir, cache_dir, device="cpu")
    assert scores == pytest.approx(dict(zip(keys, per_model.mean(0).tolist())))


def test_score_cached_scores_the_videos_asked_for_and_names_unknown_ones(run_dir, cache_dir):
    everything = score_cached(run_dir, cache_dir, device="cpu")
    some = list(everything)[:3]
    assert score_cached(run_dir, cache_dir, keys=some, device="cpu") == pytest.approx({k: everything[k] for k in some})
    with pytest.raises(UserInputError, match="nosuchvideo"):
        score_cached(run_dir, cache_dir, keys=[some[0], "nosuchvideo"], device="cpu")
