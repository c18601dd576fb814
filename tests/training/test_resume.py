"""Training state saved every epoch: an interrupted training continues and ends as an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.synthetic import write_synthetic_cache
from diffvqa_cache.training.data import load_table
from diffvqa_cache.training.loop import train
from diffvqa_cache.training.regressor import DiffVQARegressor, RegressorConfig
from diffvqa_cache.training.rules import LoadSpec
from diffvqa_cache.training.settings import TrainConfig

REG = dict(use_tcab=False, dff_channels=8, fff_dim=16, head_hidden=16)  # dropout on: the torch RNG matters


class Preempted(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way catches it."""


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    made = write_synthetic_cache(tmp_path_factory.mktemp("resume"), 30, frames=2, crops=2, grid=2, latent_hw=8,
                                 pixel_size=16, ms_channels=(8, 8, 4, 4), shard_size=16)
    return load_table(FeatureCache(made.cache_dir), LoadSpec(use_pixels=False))


def run(table, state_dir=None, stop_after=None):
    torch.manual_seed(0)
    model = DiffVQARegressor(RegressorConfig(**REG), table.feature_spec())

    def on_epoch(row):
        if row["epoch"] == stop_after:
            raise Preempted

    cfg = TrainConfig(device="cpu", epochs=5, batch_size=8, patience=3)
    return model, train(model, table.subset(np.arange(22)), cfg, 0, table.subset(np.arange(22, 30)), on_epoch,
                        state_dir)


def test_interrupted_training_continues_to_the_same_model(table, tmp_path):
    ref_model, ref = run(table)
    state = tmp_path / "state"
    with pytest.raises(Preempted):
        run(table, state, stop_after=2)
    saved = json.loads((state / "state.json").read_text())
    assert saved["epoch"] == 2 and [p.name for p in state.glob("*.safetensors")] == ["epoch-0002.safetensors"]
    model, res = run(table, state)
    assert res.resumed_after == 2 and ref.resumed_after is None
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]
    assert [h["val_srcc"] for h in res.history] == [h["val_srcc"] for h in ref.history]
    assert res.best_epoch == ref.best_epoch and res.scale == ref.scale
    for (k, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_finished_state_is_taken_as_it_is(table, tmp_path):
    _, first = run(table, tmp_path)
    model, again = run(table, tmp_path)  # nothing left to train: same result from the saved state
    assert again.resumed_after == len(first.history) - 1 and again.scale == first.scale
