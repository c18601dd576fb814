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


# every cell of the paper's tables: (trained on, tested on) -> (how it was trained, published SRCC, PLCC)
PAPER_CELLS = {("lsvq", "test"): ("lsvq", 0.915, 0.907), ("lsvq", "test1080p"): ("lsvq", 0.818, 0.860),
               ("lsvq", "kvd"): ("lsvq", 0.905, 0.906), ("lsvq", "lvqc"): ("lsvq", 0.861, 0.868),
               ("kvd", "kvd"): ("fine-tuned", 0.936, 0.929), ("lvqc", "lvqc"): ("fine-tuned", 0.910, 0.924),
               ("ytugc", "ytugc"): ("fine-tuned", 0.923, 0.926),
               ("lvqc", "kvd"): ("cross", 0.861, 0.858), ("lvqc", "ytugc"): ("cross", 0.871, 0.844),
               ("ytugc", "lvqc"): ("cross", 0.829, 0.846), ("ytugc", "kvd"): ("cross", 0.883, 0.865)}


def test_the_paper_tables_at_toy_scale(roots, tmp_path):
    out = tmp_path / "repro"
    result = reproduce(roots, out)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "table.json").read_text())
    cells = {(r["trained_on"], r["tested_on"]): r for r in rows}
    assert len(cells) == len(rows) and set(cells) == {*PAPER_CELLS, ("lsvq", "ytugc")}
    for r in rows:  # every cell filled: ours (both PLCCs), the published value and the gap
        assert all(isinstance(r[k], float) for k in ("srcc", "plcc", "plcc_raw")), r
    for key, (kind, srcc, plcc) in PAPER_CELLS.items():
        r = cells[key]
        assert (r["kind"], r["paper_srcc"], r["paper_plcc"]) == (kind, srcc, plcc), key
        assert r["gap_srcc"] == pytest.approx(r["srcc"] - srcc) and r["gap_plcc"] == pytest.approx(r["plcc"] - plcc)
    assert cells[("lsvq", "ytugc")]["paper_srcc"] is None  # not in the paper
    assert cells[("kvd", "kvd")]["n_splits"] == 2 and cells[("lsvq", "kvd")]["protocol"] == "cross-dataset from LSVQ-train"
    assert cells[("kvd", "kvd")]["protocol"] == "random splits, fine-tuned from runs/lsvq (LSVQ pre-training)"
    assert cells[("ytugc", "kvd")]["protocol"] == "cross-dataset, whole source, from scratch"
    assert cells[("ytugc", "kvd")]["n_splits"] == 1
    table = (out / "table.md").read_text()
    assert "| LSVQ | LSVQ-1080p | official split |" in table and "| KoNViD-1k | KoNViD-1k |" in table
    assert "| LIVE-VQC | YouTube-UGC | cross-dataset, whole source, from scratch |" in table
    assert "| SRCC | PLCC | PLCC raw | paper SRCC | paper PLCC |" in table and "logistic" in table
    assert (out / "table.png").stat().st_size > 1000
    # adapted on LSVQ-train only; every dataset extracted with the one preset; fine-tuned from the LSVQ run
    # with the fine-tuning settings; the cross pairs trained on every video of the source
    adapt = json.loads((out / "controller" / "adapt_config.json").read_text())
    assert adapt["splits_seen"] == ["train"] and adapt["videos"] == 10
    ft = json.loads((out / "runs" / "kvd-ft" / "config.json").read_text())
    assert ft["init"] == str(out / "runs" / "lsvq") and ft["training"]["lr"] == ft["fit"]["finetune"]["lr"] < 1e-3
    cross = json.loads((out / "runs" / "lvqc-cross" / "metrics.json").read_text())
    assert cross["protocol"] == "cross" and cross["splits"][0]["n_train"] == 16
    assert set(cross["summary"]) == {"kvd", "ytugc"}
    fingerprints = {p.name for p in (out / "cache").glob("*/*") if p.is_dir()}
    assert len(fingerprints) == 1
    # rerun: every step is found done; other settings are refused
    again = reproduce(roots, out)
    assert again.exit_code == 0 and " ".join(again.stderr.split()).count("is done, skipped") == 7, again.output
    assert json.loads((out / "table.json").read_text()) == rows
    other = reproduce(roots, out, "--seed", "3")
    assert other.exit_code == 2 and "other settings" in other.stderr


def test_without_lsvq_rows_say_from_scratch_and_are_not_compared_with_fine_tuned_values(roots, tmp_path):
    out = tmp_path / "repro"
    result = reproduce({"kvd": roots["kvd"]}, out)
    assert result.exit_code == 0, result.output
    (row,) = json.loads((out / "table.json").read_text())
    assert (row["trained_on"], row["tested_on"], row["kind"]) == ("kvd", "kvd", "scratch")
    assert row["protocol"] == "random splits, from scratch (no LSVQ pre-training)" and row["init"] is None
    assert row["paper_srcc"] is None and row["gap_srcc"] is None and isinstance(row["srcc"], float)
    table = (out / "table.md").read_text()
    assert "fine-tuned" not in table and "LSVQ pre-training, fine-tuned" not in table
    config = json.loads((out / "runs" / "kvd-scratch" / "config.json").read_text())
    assert config["init"] is None and config["training"] == config["fit"]["train"]
