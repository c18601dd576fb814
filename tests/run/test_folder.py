"""The run folder (`diffvqa_cache.run.folder`): its layout, writing it and checking it against its manifest,
and runs of earlier versions (no manifest) loading with one warning."""

from __future__ import annotations

import json

import pytest

from diffvqa_cache.errors import CacheError, UserInputError
from diffvqa_cache.run.folder import RUN_FORMAT, FitResult, RunFolder, RunManifest, verify_run

SPLITS = ["split-00", "split-01"]


def fake_run(path) -> RunFolder:
    """A run folder as `fit` writes it, with stand-in bytes for the models and plots."""
    run = RunFolder(path)
    run.prepare()
    run.write_manifest(None)
    for name in (RunFolder.CONFIG, RunFolder.SPLITS, RunFolder.SCATTER, RunFolder.LEARNING_CURVE, RunFolder.FAMILIARITY):
        run.file(name).write_bytes(b"stand-in " + name.encode())
    for i, split in enumerate(SPLITS):
        run.model_file(split).write_bytes(bytes(range(i, i + 64)))
    result = FitResult("random", "f" * 16, {"srcc": "Spearman"}, [{"split": s, "n_train": 8} for s in SPLITS],
                       {"test": {"srcc": {"median": 0.5}}}, 1.25)
    run.write_results(result, [("v1", 3.0, 2.5, "split-00", "test"), ("v2", 4.0, 3.5, "split-01", "test")])
    run.complete(SPLITS)
    return run


def test_layout_names_every_file_in_one_place(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert run.file(RunFolder.CONFIG) == tmp_path / "run" / "config.json"
    assert run.model_file("split-03") == tmp_path / "run" / "models" / "split-03.safetensors"
    assert run.state_dir("split-03") == tmp_path / "run" / "state" / "split-03"
    assert (RunFolder.METRICS, RunFolder.PREDICTIONS, RunFolder.MANIFEST, RunFolder.FAMILIARITY, RunFolder.REPORT) == (
        "metrics.json", "predictions.csv", "manifest.json", "familiarity.safetensors", "report.html")
    assert run.files_listed() == ["report.html", "config.json", "metrics.json", "predictions.csv", "models/",
                                  "scatter.png", "learning_curve.png", "familiarity.safetensors", "manifest.json"]


def test_open_refuses_what_is_not_a_run_folder(tmp_path):
    with pytest.raises(UserInputError, match="--init .*missing: no such folder"):
        RunFolder.open(tmp_path / "missing", "--init")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="is a file, not a folder"):
        RunFolder.open(tmp_path / "file")
    cache = tmp_path / "cache"
    (cache / "shards").mkdir(parents=True)
    (cache / "config.json").write_text("{}")
    with pytest.raises(UserInputError, match="is a feature cache .*fit --cache"):
        RunFolder.open(cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no config.json"):
        RunFolder.open(tmp_path / "empty").config()


def test_write_then_verify_and_read_back(tmp_path):
    run = fake_run(tmp_path / "run")
    manifest = RunManifest.read(run.file(RunFolder.MANIFEST))
    assert manifest.complete and manifest.format == RUN_FORMAT and set(manifest.files) == {
        "config.json", "splits.json", "metrics.json", "predictions.csv", "scatter.png", "learning_curve.png",
        "familiarity.safetensors", "models/split-00.safetensors", "models/split-01.safetensors"}
    run.verify()
    verify_run(run.path)
    assert run.finished() and run.has_results()
    assert [p.name for p in run.model_files()] == ["split-00.safetensors", "split-01.safetensors"]
    metrics = run.metrics()
    assert metrics.protocol == "random" and metrics["summary"] == {"test": {"srcc": {"median": 0.5}}}
    assert json.loads(run.file(RunFolder.METRICS).read_text()) == metrics.to_dict()
    assert [r["video"] for r in run.predictions()] == ["v1", "v2"] and run.predictions()[0]["pred"] == "2.5"


def test_a_flipped_byte_is_named(tmp_path):
    run = fake_run(tmp_path / "run")
    model = run.model_file("split-01")
    data = bytearray(model.read_bytes())
    data[10] ^= 0x80
    model.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"run/models/split-01.safetensors: content does not match its checksum .*refit"):
        run.verify()


def test_a_foreign_model_and_a_missing_file_are_named(tmp_path):
    run = fake_run(tmp_path / "run")
    run.model_file("split-09").write_bytes(b"another run's")
    with pytest.raises(CacheError, match="models/split-09.safetensors: not written by this run .*delete it$"):
        run.verify()
    run.model_file("split-09").unlink()
    run.file(RunFolder.SPLITS).unlink()
    with pytest.raises(CacheError, match="splits.json: missing"):
        run.verify()


def test_a_run_being_written_or_with_a_foreign_manifest_is_refused(tmp_path):
    run = fake_run(tmp_path / "run")
    run.write_manifest(None)
    assert not run.finished()
    with pytest.raises(CacheError, match="its fit has not finished .*--resume"):
        run.verify()
    run.file(RunFolder.MANIFEST).write_text(json.dumps({"format": "diffvqa-run-0", "complete": True, "files": {}}))
    with pytest.raises(CacheError, match="unreadable run manifest .*diffvqa-run-0"):
        run.verify()


def test_an_older_run_without_manifest_loads_with_one_warning(tmp_path, capsys):
    run = fake_run(tmp_path / "old")
    run.file(RunFolder.MANIFEST).unlink()
    capsys.readouterr()
    run.verify()
    RunFolder(run.path).verify()
    err = capsys.readouterr().err
    assert err.count("has no manifest.json") == 1 and "earlier version" in err
    assert run.finished()  # its metrics.json is there


def test_a_finished_split_is_recorded_for_resume(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.prepare()
    assert run.finished_split("split-00") is None
    run.state_dir("split-00").mkdir(parents=True)
    run.model_file("split-00").write_bytes(b"model")
    run.split_done("split-00", {"split": "split-00"}, [["v", 1.0, 1.5, "split-00", "test"]], [{"loss": 1.0}])
    assert not run.state_dir("split-00").exists()
    assert run.finished_split("split-00") == {"entry": {"split": "split-00"}, "rows": [["v", 1.0, 1.5, "split-00", "test"]],
                                              "history": [{"loss": 1.0}]}
    run.clear_earlier()
    assert run.finished_split("split-00") is None and run.model_files() == []
