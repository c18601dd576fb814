"""`reproduce` at toy scale: the tiny model on small datasets laid out as the official releases."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import official_layouts
from cli import app
from diffvqa_cache.datasets import load_dataset


@pytest.fixture(scope="module")
def roots(sample_root, tmp_path_factory):
    """LSVQ (10 train, 3 test, 3 test-1080p), KoNViD-1k, LIVE-VQC and YouTube-UGC (VP9) of 16 clips each."""
    records = load_dataset("sample", None).records
    root = tmp_path_factory.mktemp("official")

    def take(start, n):
        chosen = records[start:start + n]
        return [r.path for r in chosen], [r.mos for r in chosen]

    return {"lsvq": official_layouts.lsvq(root / "LSVQ", *take(0, 16), n_test=3, n_1080p=3),
            "kvd": official_layouts.kvd(root / "KoNViD_1k", *take(16, 16)),
            "lvqc": official_layouts.lvqc(root / "LIVE-VQC", *take(32, 16)),
            "ytugc": official_layouts.ytugc(root / "YouTube-UGC", *take(48, 16))}


def reproduce(roots, out, *extra):
    args = ["reproduce", "--out", str(out), *[a for name, root in roots.items() for a in (f"--{name}", str(root))],
            "--model", "tiny", "--steps", "1", "--strength", "0.5", "--frames", "2", "--crops", "2", "--grid", "4",
            "--pixel-size", "32", "--dtype", "fp32", "--shard-size", "8", "--batch-size", "12", "--adapt-steps", "4",
            "--splits", "2", "--epochs", "2", "--set", "regressor.use_tcab=false", "--set", "train.batch_size=4",
            *extra]
    return CliRunner().invoke(app, args)


def test_the_paper_table_at_toy_scale(roots, tmp_path):
    out = tmp_path / "repro"
    result = reproduce(roots, out)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "table.json").read_text())
    cells = {(r["trained_on"], r["tested_on"]): r for r in rows}
    assert set(cells) == {("lsvq", "test"), ("lsvq", "test1080p"), ("lsvq", "kvd"), ("lsvq", "lvqc"),
                          ("lsvq", "ytugc"), ("kvd", "kvd"), ("lvqc", "lvqc"), ("ytugc", "ytugc")}
    assert all(isinstance(r["srcc"], float) and isinstance(r["plcc"], float) for r in rows)  # every cell filled
    assert cells[("kvd", "kvd")]["paper_srcc"] == 0.936 and cells[("lsvq", "test")]["paper_plcc"] == 0.907
    assert cells[("kvd", "kvd")]["n_splits"] == 2 and cells[("lsvq", "kvd")]["protocol"] == "cross-dataset from LSVQ-train"
    table = (out / "table.md").read_text()
    assert "| LSVQ | LSVQ-1080p | official split |" in table and "| KoNViD-1k | KoNViD-1k |" in table
    assert (out / "table.png").stat().st_size > 1000
    # adapted on LSVQ-train only; every dataset extracted with the one preset; fine-tuned from the LSVQ run
    adapt = json.loads((out / "controller" / "adapt_config.json").read_text())
    assert adapt["splits_seen"] == ["train"] and adapt["videos"] == 10
    assert json.loads((out / "runs" / "kvd-ft" / "config.json").read_text())["init"] == str(out / "runs" / "lsvq")
    fingerprints = {p.name for p in (out / "cache").glob("*/*") if p.is_dir()}
    assert len(fingerprints) == 1
    # rerun: every step is found done; other settings are refused
    again = reproduce(roots, out)
    assert again.exit_code == 0 and " ".join(again.stderr.split()).count("is done, skipped") == 5, again.output
    assert json.loads((out / "table.json").read_text()) == rows
    other = reproduce(roots, out, "--seed", "3")
    assert other.exit_code == 2 and "other settings" in other.stderr
