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


def test_predict_refuses_a_run_whose_features_ignore_the_input(run_dir, sample_root, tmp_path):
    import json

    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["cache"]["extract"].update(strength=1.0, controller=None)
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="same diffusion features"):
        run_predict([sample_root / "videos" / "sample_001.mp4"], bad, progress=False)


def test_predict_decodes_as_the_run_did_or_says_it_cannot(run_dir, sample_root, monkeypatch, capsys):
    import diffvqa_cache.video as video

    from diffvqa_cache.fitting import RunConfig

    used = RunConfig.read(run_dir).decoders
    assert set(used) == {"h264"}
    [row] = run_predict([sample_root / "videos" / "sample_001.mp4"], run_dir, progress=False)
    assert row["decoder"] == used["h264"]
    if used["h264"] == "decord":  # decord missing here: PyAV decodes, and the user is told
        def no_decord(*args, **kwargs):
            raise ImportError("No module named 'decord'")

        monkeypatch.setattr(video, "_read_decord", no_decord)
        [row] = run_predict([sample_root / "videos" / "sample_001.mp4"], run_dir, progress=False)
        assert row["decoder"] == "pyav" and "cannot decode it here" in capsys.readouterr().err
