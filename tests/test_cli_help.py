"""Every command's --help in an 80-column terminal, and `fit`'s options generated from its settings."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from cli import app
from diffvqa_cache.training.regressor import RegressorConfig
from diffvqa_cache.training.settings import FitConfig, TrainConfig

runner = CliRunner()
NARROWEST = 30  # columns a description gets at least


def command_paths(group=None, path=()):
    group = group or typer.main.get_command(app)
    yield list(path)
    for name, cmd in getattr(group, "commands", {}).items():
        yield from command_paths(cmd, path + (name,)) if hasattr(cmd, "commands") else [list(path + (name,))]


def help_text(path: list[str]) -> str:
    result = runner.invoke(app, path + ["--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", list(command_paths()), ids=lambda p: " ".join(p) or "diffvqa-cache")
def test_help_reads_cleanly_in_80_columns(path):
    """No option name cut ("…"), no line past 80 columns, every description at least 30 columns wide (the
    indentation of a wrapped line, inside any box drawn around it, leaves 30 columns or more)."""
    text = help_text(path)
    assert "…" not in text and "Usage" in text
    for line in text.splitlines():
        assert len(line) <= 80, line
        body = line.rstrip().removeprefix("│").removesuffix("│").rstrip()
        if body.strip() and not body.lstrip().startswith("-"):
            assert 80 - (len(body) - len(body.lstrip())) - 2 >= NARROWEST, line


def flat(text: str) -> str:
    return " ".join(text.split())


def test_fit_help_lists_every_setting_with_its_default():
    text = flat(help_text(["fit"]))
    for cls in (FitConfig, TrainConfig, RegressorConfig):
        for f in dataclasses.fields(cls):
            if f.name in ("regressor", "train", "finetune", "ms_levels"):
                continue
            option = "--" + f.name.replace("_", "-")
            assert option in text, option
            if f.default is not None and not isinstance(f.default, bool):
                shown = text[text.index(option + " "):]
                assert f"[default: {f.default}]" in shown[:600], option
    for words in ("--epochs <int> Training epochs per split (with --init: finetune.epochs). [default: 30]",
                  "[default: auto]", "--test-fraction", "--pixel-size", "--memory-gb", "--data",
                  "--verify / --no-verify", "--use-tcab / --no-use-tcab", "--seed <int>"):
        assert words in text, words


@pytest.fixture
def fitted(monkeypatch):
    """The FitConfig `fit` would train with (run_fit replaced by a recorder)."""
    seen = {}

    def record(cache, out, cfg, **kwargs):
        seen["cfg"], seen["init"] = cfg, kwargs.get("init")
        raise typer.Exit(0)

    monkeypatch.setattr("pipelines.fit.run_fit", record)
    return seen


def test_fit_options_apply_over_the_config_file_and_set(fitted, tmp_path):
    config = tmp_path / "fit.yaml"
    config.write_text("seed: 3\ntrain: {epochs: 7, lr: 0.5}\nregressor: {use_tcab: false}\nmemory_gb: 9\n")
    args = ["fit", "--cache", "c", "--out", str(tmp_path / "run"), "--config", str(config), "--set", "train.lr=0.01",
            "--set", "train.epochs=5", "--epochs", "4", "--no-verify", "--memory-gb", "2", "--test-fraction", "0.3",
            "--pixel-size", "64", "--no-use-tdm", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = fitted["cfg"]
    assert (cfg.seed, cfg.train.epochs, cfg.train.lr, cfg.train.device) == (3, 4, 0.01, "cpu")
    assert (cfg.regressor.use_tcab, cfg.regressor.use_tdm, cfg.verify, cfg.memory_gb) == (False, False, False, 2.0)
    assert (cfg.test_fraction, cfg.pixel_size, cfg.splits, cfg.protocol) == (0.3, 64, 10, "auto")


def test_fit_options_set_the_fine_tuning_with_init(fitted, tmp_path):
    result = runner.invoke(app, ["fit", "--cache", "c", "--out", str(tmp_path), "--init", str(tmp_path),
                                 "--epochs", "3", "--lr", "1e-5", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    cfg = fitted["cfg"]
    assert (cfg.finetune.epochs, cfg.finetune.lr, cfg.train.epochs, cfg.train.lr) == (3, 1e-5, 30, 1e-3)
    assert cfg.train.batch_size == 8


def test_fit_option_values_are_checked(tmp_path):
    result = runner.invoke(app, ["fit", "--cache", "c", "--out", str(tmp_path), "--protocol", "nope"])
    assert result.exit_code == 2 and "protocol must be one of" in result.stderr
