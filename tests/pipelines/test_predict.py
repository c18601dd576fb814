"""predict and the Python API (`Scorer`): end to end from video files with a run's recorded settings;
per-frame outputs that sum to the score, the split models' spread, the unfamiliar-content flag, results
written as they go and resumed, timeline plots, and the CLI giving the API's numbers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffvqa_cache.errors import CacheError, UserInputError
from pipelines.predict import run_predict

REAL_VIDEOS = Path(__file__).resolve().parents[2].parent / "shared" / "realdata" / "videos"


def _run_with_config(run_dir: Path, dst: Path, edit) -> Path:
    """A copy of `run_dir` whose config.json `edit(config)` changed, as if the fit had written it (manifest
    re-recorded, so only the edit differs)."""
    from diffvqa_cache.run.folder import write_run_manifest

    shutil.copytree(run_dir, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    write_run_manifest(dst, list(json.loads((dst / "manifest.json").read_text())["files"]))
    return dst


@pytest.fixture(scope="module")
def scorer(run_dir):
    from diffvqa_cache import Scorer

    return Scorer(run_dir, device="cpu")


@pytest.fixture(scope="module")
def odd_clips(tmp_path_factory):
    """A solid black clip (nothing like the sample's textured scenes) and a file that is not a video."""
    from diffvqa_cache.clip_writer import write_clip

    folder = tmp_path_factory.mktemp("odd")
    write_clip(folder / "black.mp4", np.zeros((16, 120, 160, 3), np.uint8), fps=24)
    (folder / "broken.mp4").write_bytes(b"not a video")
    return folder


def _videos(sample_root, *numbers):
    return [sample_root / "videos" / f"sample_{n:03d}.mp4" for n in numbers]


def test_predict_is_deterministic(run_dir, sample_root, odd_clips, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("sample_001.mp4", "sample_007.mp4"):
        shutil.copy(sample_root / "videos" / name, folder / name)
    shutil.copy(odd_clips / "broken.mp4", folder)
    first = run_predict([folder], run_dir, progress=False)
    again = run_predict([folder / "sample_007.mp4", folder / "sample_001.mp4"], run_dir, progress=False)
    scores = {r.video: r.score for r in first if r.error is None}
    assert set(scores) == {"sample_001", "sample_007"}
    assert [r.score for r in run_predict([folder], run_dir, progress=False) if r.error is None] == list(scores.values())
    # in other company (other batches of the split models) the same video's score moves by float rounding only
    assert {r.video: r.score for r in again} == pytest.approx(scores, rel=1e-6)
    broken = [r for r in first if r.error is not None]
    assert [r.video for r in broken] == ["broken"] and "broken.mp4" in broken[0].error  # fails alone, with its reason


def test_frames_spread_and_scale(scorer, sample_root):
    result = scorer.score(_videos(sample_root, 3))[0]
    frames = result.frames
    assert len(frames) == 2 and [f.index for f in frames] == sorted(f.index for f in frames)
    assert [f.time for f in frames] == pytest.approx([f.index / 24 for f in frames])  # the sample is 24 fps
    assert sum(f.weight for f in frames) == pytest.approx(1.0, abs=1e-5)
    assert sum(f.weight * f.quality for f in frames) == pytest.approx(result.score, abs=1e-5)  # the method's sum
    spread = result.spread
    assert spread.models == 2 and spread.min <= result.score <= spread.max and spread.std > 0
    assert spread.std == pytest.approx(np.std([spread.min, spread.max], ddof=1))
    lo, hi = scorer.scale.low, scorer.scale.high
    assert (lo, hi) == (1.0, 5.0) and result.normalised == pytest.approx((result.score - lo) / (hi - lo))


def test_unfamiliar_content_is_flagged(scorer, sample_root, odd_clips):
    training, held_out, black = scorer.score(_videos(sample_root, 1, 30) + [odd_clips / "black.mp4"])
    assert training.unfamiliar is False and held_out.unfamiliar is False and black.unfamiliar is True
    assert black.novelty == 100.0 and held_out.novelty < 100.0


def test_cli_gives_the_api_numbers_and_writes_a_readable_plot(scorer, run_dir, sample_root, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    import cli

    videos = _videos(sample_root, 2, 5)
    out = tmp_path / "scores.json"
    res = CliRunner().invoke(cli.app, ["predict", *map(str, videos), "--run", str(run_dir), "--output", str(out),
                                       "--per-frame", "--plot", str(tmp_path / "plots"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "sample_002" in res.stdout and "MOS 1-5 of sample" in res.stdout
    written = json.loads(out.read_text())
    api = scorer.score(videos)
    assert [v["score"] for v in written["videos"]] == [r.score for r in api]
    assert [v["frames"] for v in written["videos"]] == [r.to_dict()["frames"] for r in api]
    assert written["videos"][0]["spread"]["models"] == 2 and "not a MOS confidence interval" in written["spread"]
    frame_table = api.to_pandas(per_frame=True)
    assert len(frame_table) == 4 and frame_table["score"].tolist() == [api[0].score] * 2 + [api[1].score] * 2
    with Image.open(tmp_path / "plots" / "sample_002.png") as png:
        assert png.size[0] >= 800 and png.size[1] >= 400


def test_rerun_scores_only_what_the_results_file_lacks(run_dir, scorer, sample_root, odd_clips, tmp_path):
    out = tmp_path / "scores.csv"
    first = run_predict(_videos(sample_root, 4) + [odd_clips / "broken.mp4"], run_dir, output=out, per_frame=True,
                        progress=False, scorer=scorer)
    assert [r.error is None for r in first] == [True, False]
    again = run_predict(_videos(sample_root, 4, 6) + [odd_clips / "broken.mp4"], run_dir, output=out, per_frame=True,
                        progress=False, scorer=scorer)
    assert [r.video for r in again] == ["sample_006", "broken"]  # the failed one is retried
    import pandas as pd

    table = pd.read_csv(out)
    assert table.groupby("video").size().to_dict() == {"broken": 1, "sample_004": 2, "sample_006": 2}
    assert table.loc[table.video == "sample_004", "score"].iloc[0] == pytest.approx(first[0].score)
    with pytest.raises(UserInputError, match="other columns"):
        run_predict(_videos(sample_root, 4), run_dir, output=out, per_frame=False, progress=False, scorer=scorer)


def test_import_is_cheap_and_the_api_is_exported():
    import diffvqa_cache
    from diffvqa_cache.scoring.scorer import Scorer

    assert diffvqa_cache.Scorer is Scorer and "Scorer" in diffvqa_cache.__all__
    code = "import sys, diffvqa_cache; print(sorted(m for m in ('torch', 'numpy', 'diffusers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.skipif(not REAL_VIDEOS.is_dir(), reason=f"real clips not here ({REAL_VIDEOS})")
def test_real_clip(scorer):
    """A real 8 s portrait H.264 clip (406x720) scores with frame times inside the video."""
    result = scorer.score(REAL_VIDEOS / "LSVQ_yfcc-batch3_1724__DOVER_demo.mp4")[0]
    assert result.error is None and np.isfinite(result.score) and result.novelty is not None
    assert all(0 <= f.time < 8.5 for f in result.frames) and result.frames[0].time < result.frames[1].time


def test_predict_errors_are_clear(run_dir, tmp_path):
    with pytest.raises(UserInputError, match="no such file"):
        run_predict([tmp_path / "nope.mp4"], run_dir, progress=False)
    with pytest.raises(UserInputError, match="no config.json"):
        run_predict([tmp_path], tmp_path, progress=False)


def test_predict_refuses_a_run_whose_features_ignore_the_input(run_dir, sample_root, tmp_path):
    bad = _run_with_config(run_dir, tmp_path / "run",
                           lambda config: config["cache"]["extract"].update(strength=1.0, controller=None))
    with pytest.raises(UserInputError, match="same diffusion features"):
        run_predict([sample_root / "videos" / "sample_001.mp4"], bad, progress=False)


def test_predict_refuses_a_run_fitted_on_older_features(run_dir, sample_root, tmp_path):
    """A run of 0.2 (extractor version 3, which turned rotated videos wrongly: a version-3 fingerprint and no
    extractor_version in its cache config) is refused as such, not as other weights: its models were trained
    on other features than this version extracts."""
    from diffvqa_cache.cache.settings import CacheConfig, fingerprint

    def as_version_3(config):
        cache = CacheConfig.from_dict(config["cache"])
        config["fingerprint"] = config["cache"]["fingerprint"] = fingerprint(
            cache.extract, cache.model_id, cache.controller_id, cache.view_size, "3")
        del config["cache"]["extractor_version"]

    old = _run_with_config(run_dir, tmp_path / "run", as_version_3)
    with pytest.raises(CacheError, match="extractor version 3 or older; this version extracts version 4.*"
                                         "re-extract that cache.*refit"):
        run_predict([sample_root / "videos" / "sample_001.mp4"], old, progress=False)


def test_predict_decodes_as_the_run_did_or_says_it_cannot(run_dir, sample_root, monkeypatch, capsys):
    import diffvqa_cache.extraction.video as video
    from diffvqa_cache.run.folder import RunConfig

    used = RunConfig.read(run_dir).decoders
    assert set(used) == {"h264"}
    [row] = run_predict([sample_root / "videos" / "sample_001.mp4"], run_dir, progress=False)
    assert row.decoder == used["h264"]
    if used["h264"] == "decord":  # decord missing here: PyAV decodes, and the user is told
        def no_decord(*args, **kwargs):
            raise ImportError("No module named 'decord'")

        monkeypatch.setattr(video, "_read_decord", no_decord)
        [row] = run_predict([sample_root / "videos" / "sample_001.mp4"], run_dir, progress=False)
        assert row.decoder == "pyav" and "cannot decode it here" in capsys.readouterr().err


def test_non_ascii_and_repeated_file_names_keep_unique_readable_ids(run_dir, sample_root, tmp_path):
    """`ü.mp4` and `é.mp4` were both called `_`; a name shared by two folders gets a short hash."""
    for name in ("ü.mp4", "é.mp4", "a/clip.mp4", "b/clip.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_root / "videos" / "sample_001.mp4", tmp_path / name)
    rows = run_predict([tmp_path / "ü.mp4", tmp_path / "é.mp4", tmp_path / "a", tmp_path / "b"], run_dir,
                       output=tmp_path / "scores.csv", progress=False)
    ids = [r.video for r in rows]
    assert ids[:3] == ["ü", "é", "clip"] and ids[3].startswith("clip-") and len(set(ids)) == 4
    assert all(r.error is None for r in rows)
    written = (tmp_path / "scores.csv").read_text(encoding="utf-8")
    assert all(f"\n{i}," in written for i in ids)


def test_a_finished_rerun_shows_the_table_from_the_results_file(run_dir, scorer, sample_root, tmp_path):
    from diffvqa_cache.scoring.results import format_table

    for name in ("scores.csv", "scores.json"):
        out = tmp_path / name
        first = run_predict(_videos(sample_root, 2, 3), run_dir, output=out, progress=False, scorer=scorer)
        again = run_predict(_videos(sample_root, 2, 3), run_dir, output=out, progress=False, scorer=scorer)
        assert list(again) == []  # nothing scored twice
        table = format_table(again)
        assert "no videos scored" not in table and table == format_table(first)


# ---------------------------------------------------------------- issue 23: the scale and what a score means

def test_predict_reads_scores_on_the_scale_the_fit_recorded(run_dir, sample_root, tmp_path):
    from typer.testing import CliRunner

    import cli
    from diffvqa_cache import Scorer
    from diffvqa_cache.run.folder import RunConfig

    assert RunConfig.read(run_dir).scale == (1.0, 5.0)  # the sample's known scale, recorded
    assert RunConfig.read(run_dir).scale_source == "the sample's scale"

    def on_0_to_10(config):
        config["scale"], config["scale_source"] = [0.0, 10.0], "--scale"

    run = _run_with_config(run_dir, tmp_path / "run10", on_0_to_10)
    result = Scorer(run, device="cpu").score(_videos(sample_root, 3))[0]
    assert result.normalised == pytest.approx(result.score / 10)  # not (score - 1) / 4: the cache's range
    out = tmp_path / "s.csv"
    res = CliRunner().invoke(cli.app, ["predict", str(_videos(sample_root, 3)[0]), "--run", str(run), "-o", str(out),
                                       "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "score: MOS 0-10 of sample; 0-1: normalised on that range" in res.stdout
    assert f"{result.score / 10:.3f}" in res.stdout
    row = out.read_text().splitlines()[1]
    assert "MOS 0-10 of sample" in row


def test_each_score_is_ranked_among_the_training_videos(run_dir, scorer, sample_root):
    from diffvqa_cache.run.folder import RunConfig
    from diffvqa_cache.scoring.results import format_table

    train_mos = RunConfig.read(run_dir).train_mos
    trained = {k for s in json.loads((run_dir / "splits.json").read_text()) for k in s["train"]}
    n = len(trained)  # the videos some split model trained on
    assert n >= 13 and len(train_mos) == n and train_mos == sorted(train_mos)
    results = scorer.score(_videos(sample_root, 2, 9))
    for r in results:
        below = sum(m < r.score for m in train_mos) + 0.5 * sum(m == r.score for m in train_mos)
        assert r.percentile == pytest.approx(100 * below / n)
        assert r.row()["percentile"] == r.percentile and r.to_dict()["percentile"] == r.percentile
    assert "percentile" in results.to_pandas().columns
    table = format_table(results)
    assert "better than" in table.splitlines()[0] and f"{results[0].percentile:.0f}%" in table.splitlines()[1]
    assert f"better than: the share of the {n} training videos of run {run_dir.name} (sample) scored lower" in table


def test_predict_reference_ranks_against_another_collection(run_dir, scorer, sample_root, tmp_path):
    from typer.testing import CliRunner

    import cli

    video = _videos(sample_root, 2)[0]
    score = scorer.score([video])[0].score
    ref = tmp_path / "earlier.csv"  # an earlier predict output: its `score` column; 3 of 4 below this score
    ref.write_text("video,score,error\na,%f,\nb,%f,\nc,%f,\nd,%f,\ne,,broken\n" % (score - 1, score - 2, score - 0.5,
                                                                                     score + 1))
    out = tmp_path / "ranked.json"
    res = CliRunner().invoke(cli.app, ["predict", str(video), "--run", str(run_dir), "--reference", str(ref),
                                       "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "75%" in res.stdout.splitlines()[1]
    assert "better than: the share of the 4 videos of earlier.csv (score) scored lower" in res.stdout
    written = json.loads(out.read_text())
    assert written["videos"][0]["percentile"] == 75.0 and "earlier.csv" in written["percentile"]
    # the run itself as the reference: the same numbers as the default
    res = CliRunner().invoke(cli.app, ["predict", str(video), "--run", str(run_dir), "--reference", str(run_dir),
                                       "--json", "--device", "cpu"])
    assert json.loads(res.stdout)["videos"][0]["percentile"] == scorer.score([video])[0].percentile
    other = _run_with_config(run_dir, tmp_path / "other", lambda c: c.update(scale=[0.0, 100.0]))
    res = CliRunner().invoke(cli.app, ["predict", str(video), "--run", str(run_dir), "--reference", str(other)])
    assert res.exit_code == 2 and "its MOS scale 0-100 is not this run's 1-5" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("name,quality\na,1\n")
    res = CliRunner().invoke(cli.app, ["predict", str(video), "--run", str(run_dir), "--reference", str(bad)])
    assert res.exit_code == 2 and "no score, mos or pred column (columns: name, quality)" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_predict_says_which_extraction_settings_it_reuses(run_dir, sample_root):
    from typer.testing import CliRunner

    import cli

    res = CliRunner().invoke(cli.app, ["predict", str(_videos(sample_root, 2)[0]), "--run", str(run_dir),
                                       "--device", "cpu"])
    assert res.exit_code == 0, res.output
    said = res.stderr
    assert "features as the run's cache: 1 ddim step(s) (strength 0.5: 1 UNet call(s) a view), 2 frames x 3 views " \
           "(1 + 2 crops), model tiny, on cpu; expect about" in said
    rate = float(said.split("expect about ")[1].split(" videos/s")[0])
    assert rate == pytest.approx(0.204 * 80 / 6, rel=0.05)


def test_a_results_file_written_before_the_percentile_is_read_and_extended(run_dir, scorer, sample_root, tmp_path):
    import csv

    out = tmp_path / "old.csv"
    video = _videos(sample_root, 4)[0]
    first = run_predict([video], run_dir, output=out, progress=False, scorer=scorer)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in rows[0] if c != "percentile"]
    with open(out, "w", newline="") as fh:  # as the previous version wrote it
        w = csv.DictWriter(fh, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    again = run_predict([video], run_dir, output=out, progress=False)
    assert len(again) == 0 and again.earlier[0].percentile == first[0].percentile
    assert "percentile" in out.read_text().splitlines()[0]


def test_split_models_run_at_model_threads_and_score_as_at_torchs_threads(run_dir, scorer, sample_root):
    """`model_threads=1`: the split models run at one torch thread in their own thread, which leaves the
    caller's setting alone; the scores differ from torch's setting (the default) by float rounding only."""
    import threading

    import torch

    from diffvqa_cache import Scorer
    from diffvqa_cache.scoring import scorer as scorer_module

    seen = []
    plain = scorer_module.Scorer._score_videos

    def spy(self, *a):
        seen.append((threading.current_thread() is threading.main_thread(), torch.get_num_threads()))
        return plain(self, *a)

    before = torch.get_num_threads()
    videos = _videos(sample_root, 1, 7)
    try:
        scorer_module.Scorer._score_videos = spy
        ours = Scorer(run_dir, device="cpu", model_threads=1).score(videos)
        theirs = scorer.score(videos)
    finally:
        scorer_module.Scorer._score_videos = plain
    assert seen == [(False, 1), (False, before)] and torch.get_num_threads() == before
    assert [r.score for r in ours] == pytest.approx([r.score for r in theirs], rel=1e-6)
    for bad in (0, -1, 1.5):
        with pytest.raises(UserInputError, match="model_threads must be a positive number of threads or None"):
            Scorer(run_dir, device="cpu", model_threads=bad)


def test_intra_op_threads_restores_the_setting_and_the_default_of_new_threads():
    import threading

    import torch

    from diffvqa_cache.scoring.scorer import intra_op_threads

    before = torch.get_num_threads()
    inside, fresh = [], []

    def work():
        with intra_op_threads(1):
            inside.append(torch.get_num_threads())
        inside.append(torch.get_num_threads())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))  # takes the default on first use
    t.start()
    t.join()
    assert inside == [1, before] and fresh == [before] and torch.get_num_threads() == before
    with intra_op_threads(None):
        assert torch.get_num_threads() == before
