"""`reproduce` as data: which fits it runs in which order, its settings from the options, the roots it takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffvqa_cache.cache.settings import PAPER_PRESET, ExtractConfig
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.scoring.reproduction import PAPER, ReproduceConfig, plan_fits


def _caches(*names: str) -> dict[str, Path]:
    return {n: Path("/c") / n for n in names}


def test_with_lsvq_the_others_fine_tune_from_its_run_and_the_cross_pairs_come_last(tmp_path):
    cfg = ReproduceConfig(roots={n: "/d" for n in ("lsvq", "kvd", "lvqc", "ytugc")}, fit={"train.epochs": 3}, splits=4)
    fits = plan_fits(cfg, _caches("lsvq", "kvd", "lvqc", "ytugc"), tmp_path)
    assert [(f.kind, f.trained_on, f.run.name) for f in fits] == [
        ("lsvq", "lsvq", "lsvq"), ("fine-tuned", "kvd", "kvd-ft"), ("fine-tuned", "lvqc", "lvqc-ft"),
        ("fine-tuned", "ytugc", "ytugc-ft"), ("cross", "lvqc", "lvqc-cross"), ("cross", "ytugc", "ytugc-cross")]
    lsvq, kvd, *_, lvqc_cross, _ = fits
    assert lsvq.test_caches == [Path("/c/kvd"), Path("/c/lvqc"), Path("/c/ytugc")] and lsvq.init is None
    assert lsvq.overrides == {"train.epochs": 3}  # the official protocol: LSVQ's own splits, not cfg.splits
    assert kvd.init == tmp_path / "runs" / "lsvq" and kvd.overrides == {"train.epochs": 3, "splits": 4}
    assert lvqc_cross.test_caches == [Path("/c/kvd"), Path("/c/ytugc")]
    assert lvqc_cross.overrides == {"train.epochs": 3, "protocol": "cross", "cross_train": "all"}
    # every cross pair planned has a published value to stand beside
    assert all(("cross", f.trained_on, t.name) in PAPER for f in fits if f.kind == "cross" for t in f.test_caches)


def test_without_lsvq_each_dataset_trains_from_scratch_and_a_lone_source_has_no_cross_pair(tmp_path):
    cfg = ReproduceConfig(roots={"kvd": "/d", "lvqc": "/d"})
    fits = plan_fits(cfg, _caches("kvd", "lvqc"), tmp_path)
    assert [(f.kind, f.run.name, f.init) for f in fits] == [("scratch", "kvd-scratch", None),
                                                              ("scratch", "lvqc-scratch", None),
                                                              ("cross", "lvqc-cross", None)]
    assert plan_fits(ReproduceConfig(roots={"kvd": "/d"}), _caches("kvd"), tmp_path)[-1].kind == "scratch"


def test_settings_from_the_command_check_the_fit_settings_and_adapt_with_the_preset():
    preset = ExtractConfig(**PAPER_PRESET)
    cfg = ReproduceConfig.from_command({"kvd": "/d"}, preset.replace(device="cpu"), controller="ctl", adapt_steps=7,
                                       fit={"train.epochs": 2})
    assert cfg.extract.controller == "ctl" and cfg.adapt.max_steps == 7 and cfg.adapt.device == "cpu"
    name, adapt = cfg.adapt_on()
    assert name == "kvd" and adapt.split == "all" and adapt.model == preset.model
    assert ReproduceConfig(roots={"kvd": "/d", "lsvq": "/d"}).adapt_on()[1].split == "train"
    with pytest.raises(UserInputError, match="train.epochs"):  # before any extraction
        ReproduceConfig.from_command({"kvd": "/d"}, preset, fit={"train.epochs": "abc"})


@pytest.mark.parametrize("roots", [{}, {"kvd": "/d", "koniq": "/d"}])
def test_roots_must_be_datasets_the_paper_reports(roots):
    with pytest.raises(UserInputError, match="give dataset roots among"):
        ReproduceConfig(roots=roots).check_roots()
