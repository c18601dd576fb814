"""The diffvqa-cache command: help, extract + cache info/verify, metrics, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("args", [[], ["extract"], ["fit"], ["predict"], ["metrics"], ["cache", "info"],
                                  ["cache", "verify"]])
def test_every_command_explains_itself(args):
    result = runner.invoke(app, args + ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_extract_then_cache_info_and_verify(sample_root, tmp_path):
    args = ["extract", "--dataset", "sample", "--limit", "2", "--steps", "1", "--strength", "0.5", "--frames", "2", "--grid", "4",
            "--pixel-size", "32", "--crops", "1", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cache_dir = Path(result.stdout.strip().splitlines()[-1])
    assert cache_dir.parent == tmp_path / "sample" and (cache_dir / "manifest.json").is_file()
    info = runner.invoke(app, ["cache", "info", str(tmp_path), "--json"])
    data = json.loads(info.stdout)
    assert {"fingerprint", "config", "videos", "failed", "missing", "shards", "features"} <= set(data)
    assert data["videos"] == 2 and data["failed"] == [] and data["features"]["S/ms0"]["dtype"] == "float16"
    assert runner.invoke(app, ["cache", "verify", str(cache_dir)]).exit_code == 0
    shard = next((cache_dir / "shards").glob("*.h5"))
    shard.write_bytes(shard.read_bytes()[:-100])
    bad = runner.invoke(app, ["cache", "verify", str(cache_dir)])
    assert bad.exit_code == 1 and shard.name in bad.stdout


def test_bad_root_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["extract", "--dataset", "kvd", "--root", str(tmp_path / "nope"), "--strength", "0.5",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "nope" in result.stderr
    assert not (tmp_path / "kvd").exists()


def test_metrics_command_json_and_errors():
    csv = FIXTURES / "predictions" / "dover_KoNViD-1k_first60.csv"
    result = runner.invoke(app, ["metrics", str(csv), "--pred", "pred_technical", "--mos", "mos", "--json"])
    assert result.exit_code == 0
    m = json.loads(result.stdout)
    assert set(m) == {"n", "srcc", "krcc", "plcc", "plcc_raw", "rmse"} and m["n"] == 60
    assert abs(m["srcc"] - 0.84985) < 1e-4
    bad = runner.invoke(app, ["metrics", str(csv), "--pred", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.stderr and bad.stderr.count("\n") == 1


def test_cache_info_says_where_the_chain_ends_and_which_extractor_wrote_it(sample_cache, tmp_path):
    """The default chain's last call is at t=0; a trailing few-step chain is named as not the authors' t=0;
    a cache of 0.2 (no extractor_version) is recognised as an older extractor's."""
    import shutil

    text = runner.invoke(app, ["cache", "info", str(sample_cache(limit=2).cache_dir)]).stdout
    assert "extractor    version 4\n" in text and "F_Latent (pred_x0) from the call at t=0\n" in text
    trailing = runner.invoke(app, ["cache", "info", str(sample_cache(limit=2, timestep_spacing="trailing").cache_dir)])
    assert "from the call at t=499 (the authors' features are at t=0)" in trailing.stdout
    old = shutil.copytree(sample_cache(limit=2).cache_dir, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    del config["extractor_version"]
    (old / "config.json").write_text(json.dumps(config))
    assert "extractor    version 3 or older (this version extracts 4" in runner.invoke(app, ["cache", "info", str(old)]).stdout
