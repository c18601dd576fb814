"""Fault injection: a damaged run folder (a flipped byte in a split model, a foreign model file, a killed
fit) and a damaged shard read by `cache score` are refused with one line naming the file, never scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from diffvqa_cache.cache.folder import FeatureCache, shard_layout
from diffvqa_cache.errors import CacheError
from diffvqa_cache.run.folder import verify_run, write_run_manifest
from diffvqa_cache.scoring.cached import score_cached
from diffvqa_cache.synthetic import write_synthetic_cache
from diffvqa_cache.training.settings import FitConfig
from pipelines.fit import run_fit

FIT = {"regressor.dff_channels": 8, "regressor.fff_dim": 16, "regressor.head_hidden": 16, "regressor.use_tcab": False,
       "train.epochs": 2, "train.batch_size": 8, "splits": 2}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("dr"), 24, frames=4, crops=2, grid=4, latent_hw=8,
                                 pixel_size=16, ms_channels=(8, 8, 4, 4), shard_size=8).cache_dir


@pytest.fixture(scope="module")
def run_dir(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dr-run") / "run"
    run_fit(cache_dir, out, FitConfig().with_overrides(FIT), progress=False)
    return out


def flip(path: Path, offset: int) -> None:
    """Flip the top bit of one byte (a float's sign when it is a float's last byte), the size unchanged."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x80
    path.write_bytes(bytes(data))


def one_line_error(res) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_the_run_records_a_checksum_of_every_file_it_wrote(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["complete"] and set(manifest["files"]) == {
        "config.json", "splits.json", "metrics.json", "predictions.csv", "scatter.png", "learning_curve.png",
        "familiarity.safetensors", "models/split-00.safetensors", "models/split-01.safetensors"}
    verify_run(run_dir)  # intact: no error
    assert not (run_dir / "in-use.lock").exists()


def test_a_flipped_byte_in_a_split_model_is_named_not_scored(run_dir, cache_dir, tmp_path, capsys):
    want = score_cached(run_dir, cache_dir)
    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    model = bad / "models" / "split-01.safetensors"
    flip(model, model.stat().st_size - 1)  # the sign of the last weight: the file still loads
    expected = f"{model}: content does not match its checksum"
    for load in (lambda: score_cached(bad, cache_dir),  # cache score
                 lambda: run_fit(cache_dir, tmp_path / "ft", FitConfig().with_overrides(FIT), init=bad,
                                 progress=False)):  # fit --init
        with pytest.raises(CacheError, match="refit the run") as exc:
            load()
        assert expected in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "ft").exists()  # the refused fine-tuning left nothing behind
    from diffvqa_cache import Scorer
    from pipelines.predict import run_predict

    with pytest.raises(CacheError, match="content does not match its checksum"):  # the Python API
        Scorer(bad, device="cpu")
    video = tmp_path / "a.mp4"
    video.write_bytes(b"\0")
    res = CliRunner().invoke(app, ["predict", str(video), "--run", str(bad)])
    assert expected in one_line_error(res)
    res = CliRunner().invoke(app, ["cache", "score", str(cache_dir), "--run", str(bad)])
    assert expected in one_line_error(res) and "refit the run" in res.output
    with pytest.raises(CacheError, match="content does not match"):
        run_predict([video], bad, progress=False)
    # the intact run still scores as before
    assert score_cached(run_dir, cache_dir) == want


def test_a_model_file_the_run_did_not_write_is_refused(run_dir, cache_dir, tmp_path):
    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    shutil.copy(bad / "models" / "split-00.safetensors", bad / "models" / "split-07.safetensors")
    with pytest.raises(CacheError, match=r"models/split-07.safetensors: not written by this run .*delete it"):
        score_cached(bad, cache_dir)


def test_a_refit_with_fewer_splits_leaves_no_model_of_the_earlier_run(run_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    run_fit(cache_dir, out, FitConfig().with_overrides({**FIT, "splits": 1}), progress=False)
    assert sorted(p.name for p in (out / "models").iterdir()) == ["split-00.safetensors"]
    verify_run(out)


def test_a_run_whose_fit_did_not_finish_is_refused(run_dir, cache_dir, tmp_path):
    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    write_run_manifest(bad, None)  # what a fit killed before its end leaves
    with pytest.raises(CacheError, match="its fit has not finished .*--resume"):
        score_cached(bad, cache_dir)


def test_a_run_of_an_earlier_version_loads_and_says_so_once(run_dir, cache_dir, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / "manifest.json").unlink()
    capsys.readouterr()
    assert score_cached(old, cache_dir) == score_cached(run_dir, cache_dir)
    score_cached(old, cache_dir)
    err = capsys.readouterr().err
    assert err.count("has no manifest.json") == 1 and str(old) in err


def test_cache_score_verifies_the_shards_it_reads(run_dir, cache_dir, tmp_path):
    damaged = tmp_path / "cache"
    shutil.copytree(cache_dir, damaged)
    cache = FeatureCache(damaged)
    shard = cache.shard_files()[1]
    layout = shard_layout(shard, ["S/latent"])
    flip(shard, layout.parts["S/latent"].offset + 1)  # the sign of the first fp16 latent value
    args = ["cache", "score", str(damaged), "--run", str(run_dir)]
    line = one_line_error(CliRunner().invoke(app, args))
    assert f"{shard}: content does not match its checksum" in line and "--verify" in line
    # only the shards read are hashed: a video of an intact shard still scores
    intact = cache.manifest["shards"][0]["videos"][0]
    res = CliRunner().invoke(app, [*args, "--video", intact])
    assert res.exit_code == 0 and intact in res.output, res.output
    damaged_video = cache.manifest["shards"][1]["videos"][0]
    assert one_line_error(CliRunner().invoke(app, [*args, "--video", damaged_video]))
    # the check is what catches it: without it the flipped byte silently changes a score
    res = CliRunner().invoke(app, [*args, "--no-verify"])
    assert res.exit_code == 0
    scores = {r.split(",")[0]: float(r.split(",")[1]) for r in res.output.splitlines()[1:] if r and "," in r}
    assert scores[damaged_video] != pytest.approx(score_cached(run_dir, cache_dir)[damaged_video], abs=1e-6)
