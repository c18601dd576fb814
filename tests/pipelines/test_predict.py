"""predict: end to end from video files with a run's recorded settings; deterministic."""

from __future__ import annotations

import shutil

import pytest

from diffvqa_cache.errors import UserInputError
from diffvqa_cache.fitting import FitConfig
from pipelines.fit import run_fit
from pipelines.predict import run_predict


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sample_cache, fast_fit):
    out = tmp_path_factory.mktemp("prun")
    run_fit(sample_cache(limit=16).cache_dir, out, FitConfig().with_overrides(
        {**fast_fit, "train.epochs": 1, "splits": 1, "train.batch_size": 4}), progress=False)
    return out


def test_predict_is_deterministic_and_matches_the_cache_path(run_dir, sample_root, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("sample_001.mp4", "sample_007.mp4"):
        shutil.copy(sample_root / "videos" / name, folder / name)
    (folder / "broken.mp4").write_bytes(b"not a video")
    first = run_predict([folder], run_dir, progress=False)
    again = run_predict([folder / "sample_007.mp4", folder / "sample_001.mp4"], run_dir, progress=False)
    scores = {r["video"]: r["score"] for r in first if "score" in r}
    assert set(scores) == {"sample_001", "sample_007"}
    assert {r["video"]: r["score"] for r in again} == scores  # same video, same score, any order
    assert [r for r in first if "error" in r][0]["video"] == "broken"


def test_predict_errors_are_clear(run_dir, tmp_path):
    with pytest.raises(UserInputError, match="no such file"):
        run_predict([tmp_path / "nope.mp4"], run_dir, progress=False)
    with pytest.raises(UserInputError, match="no config.json"):
        run_predict([tmp_path], tmp_path, progress=False)
