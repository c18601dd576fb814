"""Fault injection: settings of the wrong type, fit plans that cannot be scored, damaged run and cache
config.json files, a pickled Controller, impossible memory budgets. Each is one line, exit code 2, before
anything is written."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from cli import app
from diffvqa_cache.cache.settings import CacheConfig, ExtractConfig
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.training.protocols import plan_splits
from diffvqa_cache.training.settings import FitConfig, load_fit_config

runner = CliRunner()


def one_line_error(args: list[str], code: int = 2) -> str:
    """The error of a failing command: exit `code` and exactly one line on stderr (progress lines aside)."""
    result = runner.invoke(app, args)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert result.exit_code == code and len(errors) == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return errors[0]


# ---------------------------------------------------------------- 6. --set values against their types
@pytest.mark.parametrize("setting, expected", [
    ("train.epochs=abc", "train.epochs='abc': expected an integer"),
    ("memory_gb=abc", "memory_gb='abc': expected a number"),
    ("train.epochs=2.5", "train.epochs=2.5: expected an integer"),      # was a traceback after config.json
    ("regressor.use_tcab=maybe", "regressor.use_tcab='maybe': expected true or false"),  # ran as true
    ("regressor.ms_levels=[0,x]", "regressor.ms_levels=[0, 'x']: expected a list of integers"),
])
def test_set_values_are_checked_against_their_types_before_anything_is_written(cache16, tmp_path, setting, expected):
    out = tmp_path / "run"
    assert expected in one_line_error(["fit", "--cache", str(cache16), "--out", str(out), "--set", setting])
    assert not out.exists()
    grid = tmp_path / "grid.yaml"
    grid.write_text("configs:\n  - name: full\n")
    assert expected in one_line_error(["sweep", "--cache", str(cache16), "--grid", str(grid), "--out", str(tmp_path / "s"),
                                       "--serial", "--set", setting])
    assert not (tmp_path / "s").exists()


def test_reproduce_checks_its_fit_settings_before_hours_of_extraction(tmp_path):
    out = tmp_path / "repro"
    line = one_line_error(["reproduce", "--kvd", str(tmp_path), "--out", str(out), "--set", "train.epochs=abc"])
    assert "train.epochs='abc': expected an integer" in line and not out.exists()


def test_grid_and_config_files_go_through_the_same_check(cache16, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {train.epochs: 2.5}\nconfigs:\n  - name: full\n")
    assert "train.epochs=2.5: expected an integer" in one_line_error(
        ["sweep", "--cache", str(cache16), "--grid", str(grid), "--out", str(tmp_path / "s"), "--serial"])
    assert not (tmp_path / "s").exists()
    config = tmp_path / "fit.yaml"
    config.write_text("train:\n  lr: 1e-3\n  epochs: 3\n")  # PyYAML reads 1e-3 as text: still a number here
    assert load_fit_config(config, {}).train.lr == 0.001
    config.write_text("train:\n  epochs: many\n")
    with pytest.raises(UserInputError, match=f"--config {config}: setting train.epochs='many': expected an integer"):
        load_fit_config(config, {})


@pytest.mark.parametrize("cls, data, expected", [
    (ExtractConfig, {"steps": "50"}, "steps='50': expected an integer"),
    (ExtractConfig, {"fps": [1]}, "fps=[1]: expected a number or null"),
    (FitConfig, {"train": 3}, "train=3: expected a mapping"),
    (FitConfig, {"regressor": {"use_tdm": 1}}, "regressor.use_tdm=1: expected true or false"),
    (FitConfig, {"protocol": None}, "protocol=None: expected a string"),
])
def test_every_config_checks_the_types_of_its_values(cls, data, expected):
    with pytest.raises(UserInputError, match="expected") as info:
        cls.from_dict(data)
    assert expected in str(info.value)


# ---------------------------------------------------------------- 7. the plan, before any training
def test_a_test_split_too_small_to_score_is_refused_before_training(sample_cache, tmp_path):
    cache12 = sample_cache(limit=12).cache_dir
    out = tmp_path / "run"
    line = one_line_error(["fit", "--cache", str(cache12), "--out", str(out), "--set", "regressor.use_tcab=false"])
    assert "12 videos with test_fraction 0.2 leave 2 test video(s)" in line and "--set test_fraction=0.25" in line
    assert not out.exists()  # refused before any split was trained (it used to fail after the first one)
    line = one_line_error(["fit", "--cache", str(cache12), "--out", str(out), "--set", "test_fraction=0.6",
                           "--set", "train.val_fraction=0.1"])
    assert "5 training video(s), 3 of them carved out for validation" in line and "train.val_fraction=0" in line
    grid = tmp_path / "grid.yaml"
    grid.write_text("configs:\n  - name: full\n")
    assert "test_fraction" in one_line_error(["sweep", "--cache", str(cache12), "--grid", str(grid),
                                              "--out", str(tmp_path / "s"), "--serial"])
    assert not out.exists() and not (tmp_path / "s").exists()


class _Cache:
    """What plan_splits reads of a FeatureCache."""

    def __init__(self, dataset: str, splits: list[str]):
        from types import SimpleNamespace

        self.keys = [f"{dataset}{i}" for i in range(len(splits))]
        self.labels = {k: {"split": s} for k, s in zip(self.keys, splits)}
        self.config, self.path = SimpleNamespace(dataset=dataset), f"/caches/{dataset}"

    def __len__(self):
        return len(self.keys)


def test_every_test_set_and_training_part_of_the_plan_is_checked():
    from diffvqa_cache.training.protocols import check_plan

    lsvq = _Cache("lsvq", ["train"] * 8 + ["test"] * 3 + ["test1080p"] * 2)
    protocol, splits = plan_splits("lsvq", lsvq)
    with pytest.raises(UserInputError, match="official split's test1080p set has 2 video.*--protocol random"):
        check_plan(protocol, splits, lsvq.path, 0.2, 0.0)
    small = _Cache("kvd", [""] * 2)
    protocol, splits = plan_splits("cross", _Cache("lvqc", [""] * 20), [small])
    with pytest.raises(UserInputError, match="--test-cache /caches/kvd: 2 video"):
        check_plan(protocol, splits, "/caches/lvqc", 0.2, 0.0, {"kvd": small.path})
    check_plan(protocol, splits[:0], "/caches/lvqc", 0.2, 0.0)  # nothing to check
    protocol, splits = plan_splits("cross", _Cache("lvqc", [""] * 5), [_Cache("kvd", [""] * 3)])
    check_plan(protocol, splits, "/caches/lvqc", 0.2, 0.0)  # 5 train, 3 test: enough
    with pytest.raises(UserInputError, match="training needs at least 3: use --set train.val_fraction=0"):
        check_plan(protocol, splits, "/caches/lvqc", 0.2, 0.2)  # 5 - 3 for validation


# ---------------------------------------------------------------- 9. budgets, config.json, pickled weights
@pytest.mark.parametrize("budget", ["0", "-1"])
def test_cache_score_refuses_an_impossible_memory_budget_like_fit(cache16, run16, tmp_path, budget):
    line = one_line_error(["cache", "score", str(cache16), "--run", str(run16), f"--memory-gb={budget}",
                           "-o", str(tmp_path / "s.csv")])
    assert "--memory-gb must be > 0" in line and not (tmp_path / "s.csv").exists()
    assert "memory_gb must be > 0" in one_line_error(["fit", "--cache", str(cache16), "--out", str(tmp_path / "r"),
                                                      "--set", f"memory_gb={budget}"])


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["fit"]["train"].update(epochs="abc"), "setting fit.train.epochs='abc': expected an integer"),
    (lambda d: d.pop("protocol"), "missing setting(s) ['protocol']"),
    (lambda d: d["cache"].pop("dataset"), "missing setting(s) ['cache.dataset']"),
    (lambda d: d["cache"]["extract"].update(steps=0), "steps must be >= 1"),
])
def test_a_damaged_run_config_is_one_line_naming_the_file(run16, sample_root, tmp_path, change, expected):
    run = tmp_path / "run"
    shutil.copytree(run16, run)
    data = json.loads((run / "config.json").read_text())
    change(data)
    (run / "config.json").write_text(json.dumps(data))
    line = one_line_error(["predict", str(sample_root / "videos" / "sample_000.mp4"), "--run", str(run)])
    assert str(run / "config.json") in line and expected in line


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(view_size="big"), "setting view_size='big': expected an integer"),
    (lambda d: d.pop("fingerprint"), "missing setting(s) ['fingerprint']"),
    (lambda d: d["extract"].update(frames=2.5), "setting extract.frames=2.5: expected an integer or null"),
])
def test_a_damaged_cache_config_is_one_line_naming_the_file(cache16, tmp_path, change, expected):
    cache = tmp_path / "cache"
    shutil.copytree(cache16, cache)
    data = json.loads((cache / "config.json").read_text())
    change(data)
    (cache / "config.json").write_text(json.dumps(data))
    for command in (["cache", "info", str(cache)], ["fit", "--cache", str(cache), "--out", str(tmp_path / "r")]):
        line = one_line_error(command)
        assert str(cache / "config.json") in line and expected in line
    with pytest.raises(UserInputError, match="config.json"):
        CacheConfig.load(cache / "config.json")


def test_a_controller_with_only_pickled_weights_is_refused_and_nothing_is_written(tmp_path, sample_root):
    from diffvqa_cache.extraction.backbone import build_tiny, load_controller

    _, unet, _ = build_tiny()
    load_controller(unet, None).save_pretrained(tmp_path / "ctrl", safe_serialization=False)
    assert sorted(p.name for p in (tmp_path / "ctrl").iterdir()) == ["config.json", "diffusion_pytorch_model.bin"]
    out = tmp_path / "out"
    line = one_line_error(["extract", "--dataset", "sample", "--limit", "2", "--out", str(out), "--steps", "1", "--timestep-spacing", "trailing",
                           "--frames", "2", "--controller", str(tmp_path / "ctrl")])
    assert "diffusion_pytorch_model.bin" in line and "safetensors" in line and "never loaded" in line
    assert not out.exists()  # no config.json, no labels.csv
