"""The `Scorer` on a tiny fitted run (16 sample clips, tiny model, TCAB off): per-video and per-frame results
in input order, score = sum(frame weight x frame quality), the split models' spread, `to_pandas`'s columns,
and a video that cannot be scored as an error row among the others."""

from __future__ import annotations

import numpy as np
import pytest

from diffvqa_cache.errors import UserInputError
from diffvqa_cache.scoring.scorer import FRAME_COLUMNS, VIDEO_COLUMNS, Scores, VideoScore, combine_models

# the run's splits test 3 videos each: too few for the 4-parameter logistic, which fit says
pytestmark = pytest.mark.filterwarnings("ignore:4-parameter logistic fit failed")


@pytest.fixture(scope="module")
def scorer(run_dir):
    from diffvqa_cache import Scorer

    return Scorer(run_dir, device="cpu")


@pytest.fixture(scope="module")
def scored(scorer, sample_root, tmp_path_factory):
    """Three sample clips with a file that is not a video between them."""
    broken = tmp_path_factory.mktemp("broken") / "broken.mp4"
    broken.write_bytes(b"not a video")
    videos = sample_root / "videos"
    return scorer.score([videos / "sample_020.mp4", broken, videos / "sample_040.mp4", videos / "sample_060.mp4"])


def test_one_result_per_video_in_input_order(scored, tiny_extract_config):
    assert isinstance(scored, Scores)
    assert [r.video for r in scored] == ["sample_020", "broken", "sample_040", "sample_060"]
    for r in (scored[0], scored[2], scored[3]):
        assert r.error is None and np.isfinite(r.score) and r.decoder in ("decord", "pyav")
        assert 0 <= r.normalised <= 1 and 0 <= r.percentile <= 100
        assert r.spread.models == 2 and r.spread.min <= r.score <= r.spread.max and r.spread.std >= 0
        assert len(r.frames) == tiny_extract_config.frames
        assert [f.index for f in r.frames] == sorted(f.index for f in r.frames)
        assert all(f.time == pytest.approx(f.index / 24) for f in r.frames)  # the sample is 24 fps


def test_the_score_is_the_weighted_sum_of_the_frame_qualities(scored):
    for r in (scored[0], scored[2], scored[3]):
        weights = np.array([f.weight for f in r.frames])
        quality = np.array([f.quality for f in r.frames])
        assert weights.sum() == pytest.approx(1, abs=1e-5) and (weights > 0).all()
        assert (weights * quality).sum() == pytest.approx(r.score, abs=1e-4)


def test_combine_models_keeps_the_identity_for_any_models():
    rng = np.random.default_rng(0)
    outputs, scales = [], []
    for _ in range(3):
        w = rng.random(5)
        w /= w.sum()
        q = rng.normal(size=5)
        outputs.append(((w * q).sum(), q, w))
        scales.append((rng.uniform(0.5, 2), rng.normal()))
    scores, weight, quality = combine_models(outputs, scales)
    assert scores == pytest.approx([a * s + b for (s, _, _), (a, b) in zip(outputs, scales)])
    assert weight.sum() == pytest.approx(1) and (weight * quality).sum() == pytest.approx(scores.mean())


def test_a_video_that_cannot_be_scored_is_an_error_row_among_the_others(scored):
    bad = scored[1]
    assert bad.score is None and bad.spread is None and bad.frames == []
    assert "broken.mp4" in bad.error and "\n" not in bad.error
    df = scored.to_pandas()
    assert df["error"].notna().tolist() == [False, True, False, False]
    assert np.isnan(df.loc[1, "score"]) and df["score"].drop(index=1).notna().all()


def test_a_path_that_does_not_exist_is_refused_with_one_line(scorer, tmp_path):
    with pytest.raises(UserInputError, match="no such file or folder"):
        scorer.score([tmp_path / "missing.mp4"])


def test_to_pandas_has_the_documented_columns(scored):
    df = scored.to_pandas()
    assert list(df.columns) == VIDEO_COLUMNS == [
        "video", "path", "score", "normalised_score", "percentile", "spread_std", "spread_min", "spread_max",
        "models", "novelty_percentile", "unfamiliar", "decoder", "error"]
    assert df["score"].tolist()[0] == pytest.approx(scored[0].score)
    assert df["spread_std"].tolist()[0] == pytest.approx(scored[0].spread.std)
    frames = scored.to_pandas(per_frame=True)
    assert list(frames.columns) == VIDEO_COLUMNS + FRAME_COLUMNS
    assert len(frames) == sum(len(r.frames) or 1 for r in scored)  # the error row stays, once
    first = frames[frames["video"] == "sample_020"]
    assert (first["frame_weight"] * first["frame_quality"]).sum() == pytest.approx(scored[0].score, abs=1e-4)


def test_an_empty_result_has_the_columns_too():
    assert list(Scores().to_pandas().columns) == VIDEO_COLUMNS
    assert list(Scores([VideoScore("v", "/v.mp4", error="x")]).to_pandas(per_frame=True).columns) == (
        VIDEO_COLUMNS + FRAME_COLUMNS)


def test_a_second_call_gives_the_same_numbers(scorer, scored, sample_root):
    again = scorer.score(sample_root / "videos" / "sample_040.mp4")
    assert again[0].score == pytest.approx(scored[2].score, abs=1e-5)
    assert [f.quality for f in again[0].frames] == pytest.approx([f.quality for f in scored[2].frames], abs=1e-5)
