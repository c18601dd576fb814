"""Settings: one save/load and one unknown-key rule for every config dataclass; the cache's identity."""

from __future__ import annotations

import json

import pytest

from diffvqa_cache.cache.settings import CacheConfig, ExtractConfig, ModelIdentity, fingerprint
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.extraction.settings import AdaptConfig
from diffvqa_cache.run.folder import RunConfig
from diffvqa_cache.training.protocols import Split
from diffvqa_cache.training.regressor import RegressorConfig
from diffvqa_cache.training.rules import LoadSpec
from diffvqa_cache.training.settings import FitConfig, TrainConfig

ALL = [ExtractConfig(), AdaptConfig(), FitConfig(), TrainConfig(), RegressorConfig(ms_levels=(1, 3)),
       LoadSpec(branches="D", ms_levels=(0, 2)), Split("s", ["a", "b"], {"test": ["c"]})]


@pytest.mark.parametrize("cfg", ALL, ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_a_json_file(cfg, tmp_path):
    cfg.save(tmp_path / "c.json")
    assert type(cfg).load(tmp_path / "c.json") == cfg
    assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert not list(tmp_path.glob("*.incomplete"))


@pytest.mark.parametrize("cls", [type(c) for c in ALL], ids=lambda c: c.__name__)
def test_every_config_refuses_unknown_keys_naming_them(cls):
    with pytest.raises(UserInputError, match="bogus_key"):
        cls.from_dict({"bogus_key": 1})


def test_nested_configs_are_built_and_checked():
    fit = FitConfig.from_dict({"regressor": {"branches": "S"}, "train": {"epochs": 3}, "splits": 4})
    assert isinstance(fit.regressor, RegressorConfig) and fit.regressor.branches == "S" and fit.train.epochs == 3
    with pytest.raises(UserInputError, match="FitConfig.train"):
        FitConfig.from_dict({"train": {"epoch": 3}})


@pytest.mark.parametrize("cls, kwargs, message", [
    (ExtractConfig, {"steps": 0}, "steps"), (ExtractConfig, {"sampler": "heun"}, "sampler"),
    (ExtractConfig, {"view_size": 100}, "multiple of 8"), (ExtractConfig, {"fps": 1.0}, "exactly one"),
    (AdaptConfig, {"lr": 0}, "lr"), (AdaptConfig, {"dtype": "int8"}, "dtype"),
    (TrainConfig, {"loss": "hinge"}, "loss"), (FitConfig, {"protocol": "kfold"}, "protocol"),
    (LoadSpec, {"branches": "X"}, "branch"),
])
def test_validation_is_one_user_error_echoing_the_value(cls, kwargs, message):
    with pytest.raises(UserInputError, match=message):
        cls(**kwargs)


def test_fps_replaces_the_default_frames_on_the_command_line():
    cfg = ExtractConfig.from_options(frames=8, fps=1.0, strength=0.5)
    assert (cfg.frames, cfg.fps) == (None, 1.0)


def test_fingerprint_keeps_the_names_caches_were_written_with():
    """`sampler` was called `scheduler`: old config.json files load and fingerprints do not move."""
    cfg = ExtractConfig.from_dict({"scheduler": "euler"})
    assert cfg.sampler == "euler"
    settings = cfg.numeric_settings()
    assert settings["scheduler"] == "euler" and "sampler" not in settings
    assert fingerprint(cfg, "m", "c", 128) != fingerprint(ExtractConfig(), "m", "c", 128)


def test_cache_config_from_an_earlier_config_json():
    """A config.json written before CacheConfig existed (the plain dict of 0.1.0) loads as one."""
    old = {"fingerprint": "f" * 16, "extract": {**ExtractConfig().to_dict(), "scheduler": "ddim"}, "model_id": "tiny-1",
           "controller_id": "zero-init", "view_size": 128, "pixel_size": 128, "dataset": "kvd",
           "mos_range": [1.0, 5.0], "package_version": "0.1.0", "tiny_model": True}
    del old["extract"]["sampler"]
    config = CacheConfig.from_dict(old)
    assert config.extract.sampler == "ddim" and config.mos_range == (1.0, 5.0) and config.identity == ("tiny-1", "zero-init")


def test_cache_config_resolves_sizes_from_the_model():
    config = CacheConfig.create(ExtractConfig(pixel_size=224), ModelIdentity("m", "c", 128), "kvd", (1, 5))
    assert (config.view_size, config.pixel_size) == (128, 128)  # the pixel copy is capped at the view
    assert config.fingerprint == fingerprint(ExtractConfig(pixel_size=224).resolved(gpu=False), "m", "c", 128)
    wider = CacheConfig.create(ExtractConfig(view_size=256), ModelIdentity("m", "c", 128), "kvd", (1, 5))
    assert wider.view_size == 256 and wider.fingerprint != config.fingerprint


def test_run_config_reads_runs_written_by_earlier_versions():
    cache = CacheConfig.create(ExtractConfig(), ModelIdentity("m", "c", 128), "kvd", (1, 5))
    old = {"fit": FitConfig().to_dict(), "protocol": "random", "cache": "/caches/kvd/x", "fingerprint": cache.fingerprint,
           "extract": cache.to_dict(), "test_cache": None, "init": None, "package_version": "0.1.0",
           "feature_spec": {"grid": 4}}
    run = RunConfig.from_dict(old)
    assert run.cache == cache and run.cache_path == "/caches/kvd/x" and run.test_cache_paths == []
    assert RunConfig.from_dict({**old, "test_cache": "/caches/lvqc/y"}).test_cache_paths == ["/caches/lvqc/y"]


def test_adapt_resume_compares_only_what_changes_the_training():
    a, b = AdaptConfig(), AdaptConfig(max_steps=5, device="cpu", save_every=1)
    assert a.checked() == b.checked() and a.checked() != AdaptConfig(lr=1e-3).checked()


def test_tcab_sees_the_cached_views_at_their_size_by_default():
    """224 px copies and 16 px patches: 196 tokens per frame, as VideoMamba sees a frame (0.1 resized to 64)."""
    spec = FitConfig().load_spec(224)
    assert spec.pixel_size == 224 and RegressorConfig().tcab_patch == 16 and (224 // 16) ** 2 == 196
    assert FitConfig(pixel_size=64).load_spec(224).pixel_size == 64  # the small setting for CPU runs
    with pytest.raises(UserInputError, match="larger than the cache's 128 px"):
        FitConfig(pixel_size=224).load_spec(128)


def test_dtype_auto_is_resolved_where_the_views_run_and_recorded():
    """The default precision is the preset's bf16 on a CUDA GPU and fp32 on the CPU; the cache records the
    resolved one, so CPU and GPU caches never mix; an explicit dtype stays as given."""
    cfg, identity = ExtractConfig(), ModelIdentity("m", "c", 128)
    assert cfg.dtype == "auto"
    cpu = CacheConfig.create(cfg, identity, "kvd", (1, 5))
    gpu = CacheConfig.create(cfg, identity, "kvd", (1, 5), gpu=True)
    assert (cpu.extract.dtype, gpu.extract.dtype) == ("fp32", "bf16") and cpu.fingerprint != gpu.fingerprint
    assert CacheConfig.create(cfg.replace(dtype="fp16"), identity, "kvd", (1, 5), gpu=True).extract.dtype == "fp16"


def test_caches_of_older_extractors_are_recognised():
    from diffvqa_cache.cache.settings import EXTRACTOR_VERSION

    new = CacheConfig.create(ExtractConfig(), ModelIdentity("m", "c", 128), "kvd", (1, 5))
    assert new.extractor_version == EXTRACTOR_VERSION == "4" and new.is_current
    old = new.to_dict()
    del old["extractor_version"]  # config.json of 0.2 and earlier
    loaded = CacheConfig.from_dict(old)
    assert not loaded.is_current and loaded.extractor == "3 or older" and loaded.extract == new.extract


def test_crop_placement_and_small_frames_are_fingerprinted_choices():
    base = fingerprint(ExtractConfig(), "m", "c", 512)
    assert (ExtractConfig().crop_placement, ExtractConfig().small_frames) == ("independent", "upscale")
    for change in ({"crop_placement": "aligned"}, {"small_frames": "pad"}):
        assert fingerprint(ExtractConfig(**change), "m", "c", 512) != base
    for bad in ({"crop_placement": "centre"}, {"small_frames": "crop"}):
        with pytest.raises(UserInputError, match=next(iter(bad))):
            ExtractConfig(**bad)
