"""The unfamiliar-content reference: calibrated on the training videos' own distances, saved without pickle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.errors import CacheError
from diffvqa_cache.scoring.familiarity import DIMS, FamiliarityReference, block_sizes, describe, write_reference


def _stats(n, width, rng, shift=0.0):
    return rng.normal(size=(n, width)) + shift


@pytest.mark.parametrize("width", [40, DIMS + 60])  # kept as is, and randomly projected
def test_far_videos_are_flagged_and_near_ones_are_not(width, tmp_path):
    rng = np.random.default_rng(0)
    train = _stats(200, width, rng)
    ref = FamiliarityReference.fit(train, [width // 2, width - width // 2], {"fingerprint": "f"})
    near = ref.novelty(_stats(50, width, rng))
    far = ref.novelty(_stats(5, width, rng, shift=3.0))
    assert sum(n.unfamiliar for n in near) <= 3 and all(n.unfamiliar and n.percentile == 100 for n in far)
    assert 20 < np.median([n.percentile for n in near]) < 80  # in-distribution videos spread over the percentiles
    ref.save(tmp_path / "ref.safetensors")
    assert (tmp_path / "ref.safetensors").read_bytes()[8:9] == b"{"  # safetensors: a JSON header, then raw arrays
    again = FamiliarityReference.load(tmp_path / "ref.safetensors")
    assert again.meta == {"fingerprint": "f"}
    assert [n.unfamiliar for n in again.novelty(np.vstack([train[:3], train[:3] + 3]))] == [False] * 3 + [True] * 3


def test_describe_pools_each_channel_and_fewer_than_three_videos_write_nothing(tmp_path):
    latent = torch.arange(2 * 3 * 1 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 3, 1, 4, 2, 2)
    pixels = torch.full((2, 3, 1, 3, 4, 4), 255, dtype=torch.uint8)
    branches = {"S": BranchFeatures(latent=latent, pixels=pixels)}
    stats = describe(branches)
    assert stats.shape == (2, 2 * 4 + 2 * 3) and block_sizes(branches) == [8, 6]
    assert np.allclose(stats[0, :4], latent[0].transpose(0, 2).reshape(4, -1).mean(1).numpy())
    assert np.allclose(stats[:, 8:11], 1.0) and np.allclose(stats[:, 11:], 0.0)  # pixels scaled to 0-1
    (tmp_path / "old.safetensors").write_bytes(b"stale")

    class Table:
        keys = ["a", "b"]

    Table.branches = branches
    assert not write_reference(tmp_path / "old.safetensors", Table, {"split-00": ["a", "b"]}, {})
    assert not (tmp_path / "old.safetensors").exists()
    with pytest.raises(CacheError, match="at least 3"):
        FamiliarityReference.fit(stats, [8, 6], {})


def test_run_reference_combines_its_models_and_reads_the_pooled_format_1(tmp_path):
    """One reference per split model: a video in one model's training set but far from the other's is
    flagged only when at least half of the models flag it; novelty is the median over the models. A pooled
    reference written before (format 1) still loads, as one reference for every model."""
    from diffvqa_cache.scoring.familiarity import RunReference

    rng = np.random.default_rng(1)
    a, b = _stats(100, 20, rng), _stats(100, 20, rng, shift=4.0)
    refs = {"split-00": FamiliarityReference.fit(a, [20], {"n_videos": 100}),
            "split-01": FamiliarityReference.fit(b, [20], {"n_videos": 100})}
    run = RunReference(refs, {"fingerprint": "f"})
    near_a, far = _stats(1, 20, rng), _stats(1, 20, rng, shift=-8.0)
    per = [r.novelty(near_a)[0] for r in refs.values()]
    got = run.novelty(near_a)[0]
    assert per[0].unfamiliar is False and per[1].unfamiliar is True and got.unfamiliar is True  # 1 of 2: half
    assert got.percentile == pytest.approx(np.median([n.percentile for n in per]))
    assert run.novelty(far)[0].unfamiliar is True
    three = RunReference({**refs, "split-02": FamiliarityReference.fit(_stats(100, 20, rng), [20], {})}, {})
    assert three.novelty(near_a)[0].unfamiliar is False  # 1 of 3 models: not flagged
    run.save(tmp_path / "run.safetensors")
    again = RunReference.load(tmp_path / "run.safetensors")
    assert again.meta == {"fingerprint": "f"} and list(again.references) == ["split-00", "split-01"]
    assert again.references["split-01"].meta == {"n_videos": 100}
    assert again.novelty(near_a)[0].percentile == pytest.approx(got.percentile)
    refs["split-00"].save(tmp_path / "old.safetensors")  # format 1
    old = RunReference.load(tmp_path / "old.safetensors")
    assert list(old.references) == ["all"] and old.meta["pooled"] is True
