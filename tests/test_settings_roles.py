"""One rule for what changes the numbers: each setting declares its role once (`setting(..., numbers=False)`),
and cache fingerprints, resume checks, sweep task ids and `reproduce` all derive their sets from it."""

from __future__ import annotations

import dataclasses

import pytest

from diffvqa_cache.cache.settings import ExtractConfig, fingerprint
from diffvqa_cache.config import Config
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.extraction.settings import AdaptConfig
from diffvqa_cache.training.protocols import Split
from diffvqa_cache.training.regressor import RegressorConfig
from diffvqa_cache.training.settings import FinetuneConfig, FitConfig, TrainConfig
from diffvqa_cache.training.sweep_grid import load_grid
from diffvqa_cache.training.sweeps import SweepTask

SETTINGS = [ExtractConfig, AdaptConfig, FitConfig, TrainConfig, RegressorConfig, FinetuneConfig]
IDENTITY = ("sd-0123456789abcdef", "ctrl-fedcba9876543210", 512)


def test_fingerprints_of_existing_caches_do_not_move():
    """The values the code gave before the rule was declared per field (extractor version 4)."""
    assert fingerprint(ExtractConfig(), *IDENTITY, version="4") == "0ed72453e0b18d61"
    few = ExtractConfig(sampler="dpm", steps=4, fps=2.0, frames=None)
    assert fingerprint(few, "sd-0123456789abcdef", "zero-init", 512, version="4") == "515a80fe43a97157"


def test_placement_and_weight_names_leave_the_fingerprint_alone():
    base = fingerprint(ExtractConfig(), *IDENTITY)
    moved = ExtractConfig(batch_size=3, device="cpu", shard_size=5, decode_workers=1, backend="pyav",
                          model="/elsewhere/sd", revision="main", controller="/elsewhere/ctrl")
    assert fingerprint(moved, *IDENTITY) == base
    assert fingerprint(ExtractConfig(crops=4), *IDENTITY) != base
    assert ExtractConfig.fields_where(numbers=False) == ("batch_size", "device", "shard_size", "decode_workers",
                                                         "backend")
    assert ExtractConfig.fields_where(weights=True) == ("model", "revision", "controller")


def test_sweep_task_ids_do_not_move_and_ignore_placement():
    split = Split("split0", ["a", "b", "c"], {"test": ["d", "e"]})
    assert SweepTask("base", {}, {}, split, 0, "0ed72453e0b18d61").task_id == "42b4836679f649cd"
    base = {"train.epochs": 2, "splits": 2}
    task = SweepTask("no_tdm", {"regressor.use_tdm": False}, base, split, 3, "0ed72453e0b18d61")
    assert task.task_id == "742ac054fb346221"
    placed = SweepTask("no_tdm", {"regressor.use_tdm": False, "train.device": "cpu"},
                       {**base, "memory_gb": 16, "data": "stream", "verify": False, "eval_batch_size": 8},
                       split, 3, "0ed72453e0b18d61")
    assert placed.task_id == task.task_id
    assert placed.ids[1] != task.task_id  # the id earlier versions wrote: their results still count
    assert SweepTask("no_tdm", {"regressor.use_tdm": False}, {**base, "train.epochs": 3}, split, 3,
                     "0ed72453e0b18d61").task_id != task.task_id


def test_split_settings_are_refused_per_configuration(tmp_path):
    assert FitConfig.fields_where(splits=True) == ("protocol", "splits", "test_fraction", "seed")
    grid = tmp_path / "g.yaml"
    grid.write_text("- {name: a, test_fraction: 0.3}\n")
    with pytest.raises(UserInputError, match="test_fraction"):
        load_grid(grid)


def test_device_is_placement_everywhere():
    """Adapt, extract and fit agree: a resumed or reused run may move to another device (precision is a
    setting of its own: extract's dtype, adapt's dtype, train.amp)."""
    for cls in (ExtractConfig, AdaptConfig, TrainConfig):
        assert "device" in cls.fields_where(numbers=False), cls
    assert "device" not in AdaptConfig().checked() and "max_steps" not in AdaptConfig().checked()
    assert AdaptConfig.may_change_on_resume() == ["--max-steps", "--save-every", "--keep-checkpoints", "--device"]
    numbers = FitConfig().numbers()
    assert {"data", "memory_gb", "verify"}.isdisjoint(numbers) and "device" not in numbers["train"]
    assert numbers["train"]["epochs"] == 30 and numbers["regressor"]["ms_levels"] == [0, 1, 2, 3]


def test_fit_override_keys_are_read_as_with_overrides_reads_them():
    kept = FitConfig.numbers_overrides({"memory_gb": 3, "device": "cpu", "train.eval_batch_size": 8,
                                        "epochs": 4, "regressor.use_tcab": False, "finetune.lr": 1e-5})
    assert kept == {"epochs": 4, "regressor.use_tcab": False, "finetune.lr": 1e-5}
    assert FitConfig.setting_field("nope") is None and FitConfig.setting_field("train.nope") is None


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_setting_has_help_text(cls):
    for f in dataclasses.fields(cls):
        if not isinstance(f.default_factory, type) or not issubclass(f.default_factory, Config):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_unknown_roles_are_refused():
    with pytest.raises(ValueError, match="unknown role"):
        FitConfig.fields_where(fingerprinted=True)


def test_reproduce_resumes_across_placement_only(tmp_path):
    from diffvqa_cache.scoring.reproduction import ReproduceConfig
    from diffvqa_cache.scoring.reproduction import record_settings as _record

    cfg = ReproduceConfig(roots={"kvd": "/data/kvd"}, fit={"train.epochs": 2})
    _record(cfg, tmp_path)
    moved = cfg.replace(extract=cfg.extract.replace(device="cpu", batch_size=2),
                        adapt=cfg.adapt.replace(device="cpu", max_steps=5), fit={"train.epochs": 2, "memory_gb": 4})
    _record(moved, tmp_path)  # accepted: only placement (and how far adaptation goes) changed
    with pytest.raises(UserInputError, match="other settings"):
        _record(moved.replace(fit={"train.epochs": 3, "memory_gb": 4}), tmp_path)
    with pytest.raises(UserInputError, match="other settings"):
        _record(moved.replace(extract=cfg.extract.replace(crops=4)), tmp_path)
