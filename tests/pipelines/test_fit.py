"""Stage two end to end on the embedded sample: protocols, run directory, checkpoints, predict."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.errors import CacheError, UserInputError
from diffvqa_cache.run.folder import RunConfig
from diffvqa_cache.training.checkpoint import load_checkpoint, read_meta
from diffvqa_cache.training.protocols import random_splits
from diffvqa_cache.training.settings import FitConfig, load_fit_config
from pipelines.fit import run_fit


@pytest.fixture(scope="module")
def whole_sample(sample_cache):
    return sample_cache().cache_dir


@pytest.fixture(scope="module")
def fast_run(whole_sample, fast_fit, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return run_fit(whole_sample, out, FitConfig().with_overrides(fast_fit), progress=False), out


def relabel(cache_dir, dest, split_of=None, shuffle_seed=None):
    """A copy of the cache with labels.csv rewritten (splits assigned or MOS shuffled)."""
    shutil.copytree(cache_dir, dest)
    with open(dest / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    if shuffle_seed is not None:
        mos = np.random.default_rng(shuffle_seed).permutation([r["mos"] for r in rows])
        for r, m in zip(rows, mos):
            r["mos"] = m
    for i, r in enumerate(rows):
        if split_of:
            r["split"] = split_of(i)
    with open(dest / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["key", "mos", "split", "path"])
        w.writeheader()
        w.writerows(rows)
    return dest


def test_random_splits_are_by_video_and_seeded():
    keys = [f"v{i}" for i in range(50)]
    a, b = random_splits(keys, 3, 0.2, seed=1), random_splits(keys, 3, 0.2, seed=1)
    assert a == b and a != random_splits(keys, 3, 0.2, seed=2)
    for s in a:
        assert len(s.test["test"]) == 10 and not set(s.train) & set(s.test["test"])
        assert sorted(s.train + s.test["test"]) == sorted(keys)
    assert a[0].test != a[1].test


def test_run_directory_is_complete(fast_run, whole_sample):
    result, out = fast_run
    for name in ("config.json", "metrics.json", "predictions.csv", "splits.json", "scatter.png", "learning_curve.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["summary"]["test"]) >= {"srcc", "krcc", "plcc", "plcc_raw", "rmse", "n_splits"}
    assert set(metrics["summary"]["test"]["srcc"]) == {"median", "mean", "std"}
    assert len(metrics["splits"]) == 2 and metrics["protocol"] == "random"
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    splits = json.loads((out / "splits.json").read_text())
    assert {r["video"] for r in rows if r["split"] == "split-00"} == set(splits[0]["test"]["test"])
    config = json.loads((out / "config.json").read_text())
    assert config["fingerprint"] == whole_sample.name and config["fit"]["regressor"]["use_tcab"] is False
    assert config["cache"]["fingerprint"] == whole_sample.name and config["cache_path"] == str(whole_sample)
    assert RunConfig.read(out).fit == FitConfig.from_dict(config["fit"])
    meta = read_meta(out / "models" / "split-00.safetensors")
    assert meta["fingerprint"] == whole_sample.name and len(meta["scale"]) == 2


def test_checkpoint_refuses_features_with_another_fingerprint(fast_run, whole_sample):
    _, out = fast_run
    model, meta = load_checkpoint(out / "models" / "split-01.safetensors", whole_sample.name)
    assert meta["split"] == "split-01"
    with pytest.raises(CacheError, match="trained on features"):
        load_checkpoint(out / "models" / "split-01.safetensors", "0" * 16)


def test_fit_learns_far_better_than_shuffled_labels(fast_fit, tmp_path):
    """Real labels are learned; shuffled ones are not. The shuffled-label control catches leakage of test
    videos into training (a leaking fit memorises the shuffled test labels too). On a synthetic cache whose
    features carry the MOS (the tiny random backbone's features of the sample carry a weak, noisy signal:
    SRCC 0.5 +- 0.2 per split, too little to test learning on 3 splits)."""
    from diffvqa_cache.synthetic import write_synthetic_cache

    cache = write_synthetic_cache(tmp_path / "synthetic", 60, frames=2, crops=2, grid=2, latent_hw=8, pixel_size=16,
                                  ms_channels=(16, 16, 8, 8), shard_size=20).cache_dir
    cfg = FitConfig().with_overrides({**fast_fit, "train.epochs": 8, "splits": 3})
    real = run_fit(cache, tmp_path / "real", cfg, progress=False)["summary"]["test"]["srcc"]["median"]
    shuffled_cache = relabel(cache, tmp_path / "shuffled_cache", shuffle_seed=0)
    shuffled = run_fit(shuffled_cache, tmp_path / "shuf", cfg, progress=False)["summary"]["test"]["srcc"]["median"]
    assert real > 0.8 and shuffled < 0.45, (real, shuffled)


def test_lsvq_official_split_tests_on_both_test_sets(whole_sample, fast_fit, tmp_path):
    cache = relabel(whole_sample, tmp_path / "lsvq", split_of=lambda i: ["train", "train", "test", "test1080p"][i % 4])
    result = run_fit(cache, tmp_path / "run", FitConfig().with_overrides(fast_fit), progress=False)
    assert result["protocol"] == "lsvq" and set(result["summary"]) == {"test", "test1080p"}
    assert result["splits"][0]["n_train"] == sum(1 for i in range(len(load_dataset("sample", None).records)) if i % 4 < 2)


def test_cross_dataset_and_fine_tune(fast_run, whole_sample, fast_fit, tmp_path):
    _, first = fast_run
    other = relabel(whole_sample, tmp_path / "other")
    result = run_fit(whole_sample, tmp_path / "cross", FitConfig().with_overrides(fast_fit), test_cache_paths=[other],
                     init=first, progress=False)
    n_videos = len(load_dataset("sample", None).records)
    assert result["protocol"] == "cross" and list(result["summary"]) == ["sample"]
    assert result["splits"][0]["n_train"] == n_videos and result["splits"][0]["sample"]["n"] == n_videos
    assert json.loads((tmp_path / "cross" / "config.json").read_text())["init"] == str(first)


def test_fine_tuning_has_its_own_recorded_settings(fast_run, whole_sample, fast_fit, tmp_path):
    """`--init` trains with fit.finetune's lr, epochs and warm-up (not the from-scratch ones), overridable,
    and the run's config.json and checkpoints say which settings were used."""
    defaults = FitConfig()
    assert defaults.training(True).lr < defaults.train.lr and defaults.training(True).epochs < defaults.train.epochs
    assert defaults.training(True).warmup_epochs == 0 and defaults.training(False) == defaults.train
    _, first = fast_run
    cfg = FitConfig().with_overrides({**fast_fit, "splits": 1, "finetune.lr": 5e-5, "finetune.epochs": 1})
    run_fit(whole_sample, tmp_path / "ft", cfg, init=first, progress=False)
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["fit"]["finetune"] == {"lr": 5e-5, "epochs": 1, "warmup_epochs": 0.0}
    assert config["training"]["lr"] == 5e-5 and config["training"]["epochs"] == 1
    assert config["training"]["batch_size"] == 8  # the rest is train's
    meta = read_meta(tmp_path / "ft" / "models" / "split-00.safetensors")
    assert meta["train"]["lr"] == 5e-5 and len(meta["history"]) == 1
    scratch = json.loads((fast_run[1] / "config.json").read_text())
    assert scratch["init"] is None and scratch["training"] == scratch["fit"]["train"]
    with pytest.raises(UserInputError, match="finetune"):
        FitConfig().with_overrides({"finetune.lr": 0})


def test_resuming_a_run_written_before_fine_tuning_settings(fast_run, tmp_path):
    """A run directory without `training` (earlier versions) trained with fit.train: resuming it from scratch
    is fine; resuming it as a fine-tuning (which would now train with other settings) is refused."""
    from diffvqa_cache.run.folder import check_resumable

    _, out = fast_run
    old = json.loads((out / "config.json").read_text())
    old.pop("training")
    (tmp_path / "config.json").write_text(json.dumps(old))
    new = RunConfig.read(out)
    check_resumable(tmp_path, new)
    as_fine_tuning = new.replace(init="runs/lsvq", training=new.fit.training(fine_tuning=True))
    with pytest.raises(UserInputError, match="init, training"):
        check_resumable(tmp_path, as_fine_tuning)


def test_fine_tuning_epochs_on_the_command_line(fast_run, whole_sample, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    _, first = fast_run
    res = CliRunner().invoke(app, ["fit", "--cache", str(whole_sample), "--out", str(tmp_path / "ft"), "--init",
                                   str(first), "--epochs", "1", "--splits", "2", "--set", "regressor.use_tcab=false"])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["training"]["epochs"] == 1 and config["training"]["lr"] == FitConfig().finetune.lr
    assert config["fit"]["train"]["epochs"] == FitConfig().train.epochs  # --epochs went to finetune.epochs
    assert "PLCC(logistic)" in res.output and "PLCC(raw)" in res.output


def test_both_plccs_are_reported_and_labelled(fast_run):
    from diffvqa_cache.run.summary import format_summary

    result, out = fast_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert "logistic" in metrics["metrics"]["plcc"] and "raw" in metrics["metrics"]["plcc_raw"]
    s = metrics["summary"]["test"]
    assert s["plcc"]["median"] != s["plcc_raw"]["median"]
    text = format_summary(result, out)
    assert f"PLCC(logistic) {s['plcc']['median']:.4f}" in text and f"PLCC(raw) {s['plcc_raw']['median']:.4f}" in text


def test_familiarity_reference_holds_each_split_models_training_videos(fast_run):
    """The unfamiliar-content reference of a split model is that model's training videos, not every split's
    (which is every video of the cache, test videos included)."""
    from diffvqa_cache.scoring.familiarity import FILE_NAME, RunReference

    _, out = fast_run
    splits = json.loads((out / "splits.json").read_text())
    ref = RunReference.load(out / FILE_NAME)
    assert list(ref.references) == [s["name"] for s in splits]
    for s in splits:
        r = ref.references[s["name"]]
        assert r.meta["n_videos"] == len(s["train"]) == len(r.points) and len(r.loo) == len(s["train"])


def test_lsvq_protocol_with_further_test_caches(whole_sample, fast_fit, tmp_path):
    """LSVQ -> its test sets and two other datasets in one run, each reported on its own (a KeyError in 0.1)."""
    lsvq = relabel(whole_sample, tmp_path / "lsvq", split_of=lambda i: ["train", "train", "test", "test1080p"][i % 4])
    others = [relabel(whole_sample, tmp_path / f"other{i}") for i in range(2)]
    result = run_fit(lsvq, tmp_path / "run", FitConfig().with_overrides(fast_fit), test_cache_paths=others,
                     progress=False)
    n = len(load_dataset("sample", None).records)
    assert result["protocol"] == "lsvq" and list(result["summary"]) == ["test", "test1080p", "sample", "sample-2"]
    assert result["splits"][0]["n_train"] == n // 2 and result["splits"][0]["sample-2"]["n"] == n
    cross = run_fit(lsvq, tmp_path / "cross", FitConfig().with_overrides({**fast_fit, "protocol": "cross"}),
                    test_cache_paths=others[:1], progress=False)
    assert list(cross["summary"]) == ["sample"] and cross["splits"][0]["n_train"] == n // 2  # LSVQ-train only


def test_fit_refuses_damaged_cache(whole_sample, fast_fit, tmp_path):
    cache = relabel(whole_sample, tmp_path / "damaged")
    next((cache / "shards").glob("*.h5")).unlink()
    with pytest.raises(CacheError, match="damaged or missing shards"):
        run_fit(cache, tmp_path / "run", FitConfig().with_overrides(fast_fit), progress=False)


def test_tcab_and_crops_train_and_evaluate(whole_sample, fast_fit, tmp_path):
    cfg = FitConfig().with_overrides({**fast_fit, "regressor.use_tcab": True, "splits": 1, "train.epochs": 1,
                                      "pixel_size": 32, "regressor.tcab_d_model": 16})
    result = run_fit(whole_sample, tmp_path / "run", cfg, progress=False)
    assert np.isfinite(result["summary"]["test"]["srcc"]["median"])


def test_config_overrides_and_yaml(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("splits: 3\ntrain:\n  epochs: 7\nuse_tdm: false\n")
    cfg = load_fit_config(path, {"seed": 4})
    assert (cfg.splits, cfg.train.epochs, cfg.regressor.use_tdm, cfg.seed) == (3, 7, False, 4)
    with pytest.raises(UserInputError, match="unknown setting"):
        FitConfig().with_overrides({"nonsense": 1})
    with pytest.raises(UserInputError, match="branches"):
        FitConfig().with_overrides({"branches": "X"})


def test_latent_grid_and_ms_std_ablations_fit_and_score_end_to_end(sample_cache, fast_fit, tmp_path):
    """The two cheap ablations: F_Latent kept at a finer grid than F_MS (folded onto it in DFF) and F_MS
    cell stds beside the means (extracted with --ms-pool mean+std, chosen at load time). The means of a
    mean+std cache are a plain extraction's; fit, the streamed path and predict all take the same tensors."""
    import torch

    from diffvqa_cache import Scorer
    from diffvqa_cache.cache.folder import FeatureCache
    from diffvqa_cache.scoring.cached import score_cached
    from diffvqa_cache.training.data import estimate_bytes, load_table
    from diffvqa_cache.training.stream import StreamedTable

    plain = FeatureCache(sample_cache(limit=16).cache_dir)
    both = FeatureCache(sample_cache(limit=16, ms_pool="mean+std").cache_dir)
    assert both.fingerprint != plain.fingerprint and both.config.extract.ms_pool == "mean+std"
    for key in plain.keys[:2]:
        a, b = plain.read(key).branches, both.read(key).branches
        for br in "SD":
            assert np.array_equal(a[br].latent, b[br].latent)
            for level, (m, mb) in enumerate(zip(a[br].ms, b[br].ms)):
                c = m.shape[2]
                assert mb.shape[2] == 2 * c and np.array_equal(m, mb[:, :, :c]) and (mb[:, :, c:] >= 0).all()
                # the tiny UNet's level 0 is 4x4, kept as it is (no spread); the others are pooled 8x8, 16x16
                assert (mb[:, :, c:] > 0).any() == (level > 0)
    cfg = FitConfig().with_overrides({**fast_fit, "ms_std": True, "latent_grid": 16})
    result = run_fit(both.path, tmp_path / "run", cfg, progress=False)
    assert np.isfinite(result["summary"]["test"]["srcc"]["median"])
    spec = RunConfig.read(tmp_path / "run").feature_spec
    plain_spec = load_table(plain, FitConfig().load_spec(plain.config.pixel_size)).feature_spec()
    assert spec["latent_grid"] == 16 and spec["grid"] == plain_spec["grid"] == 4
    assert spec["ms_channels"] == [2 * c for c in plain_spec["ms_channels"]]
    model, _ = load_checkpoint(sorted((tmp_path / "run" / "models").glob("*.safetensors"))[0], both.fingerprint, "cpu")
    assert model.branches["D"].dff.latent_norm.num_features == 4 * (16 // 4) ** 2  # space to depth, nothing averaged
    # the streamed path and the memory estimate follow the same rules
    load = cfg.load_spec(both.config.pixel_size)
    table, streamed = load_table(both, load), StreamedTable(both, load, budget_bytes=10**8)
    assert streamed.feature_spec() == table.feature_spec() == spec and estimate_bytes(both, load) == table.nbytes()
    plan = [(np.array([3, 0, 7]), np.array([[0, 1], [1, 1], [0, 0]]))]
    for x, y in zip(table.batches(plan, "cpu"), streamed.batches(plan, "cpu")):
        assert all(torch.equal(p, q) for br in x for p, q in zip(x[br].parts(), y[br].parts()))
    # predict recomputes the features and applies the same load rules: the cached video's score
    key = both.keys[5]
    fresh = Scorer(tmp_path / "run", device="cpu").score([both.labels[key]["path"]])[0]
    assert fresh.error is None
    assert fresh.score == pytest.approx(score_cached(tmp_path / "run", both.path, [key], "cpu")[key], abs=1e-4)
    # the std arm needs a cache that has them; plain caches say how to get one
    with pytest.raises(UserInputError, match=r"--ms-pool mean\+std"):
        run_fit(plain.path, tmp_path / "nope", cfg, progress=False)


# ---------------------------------------------------------------- issue 23: scale, time you can plan

def test_known_datasets_have_their_scale_and_a_bad_scale_is_refused():
    from diffvqa_cache.training.fitting import choose_scale

    observed = (1.37, 4.64)
    assert choose_scale("kvd", np.zeros(0), observed) == ((1.0, 5.0), "KoNViD-1k's scale")
    assert choose_scale("lsvq", np.zeros(0), observed) == ((0.0, 100.0), "LSVQ's scale")
    assert choose_scale("csv", np.zeros(0), observed) == (observed, "the observed range of the training labels")
    assert choose_scale("csv", np.zeros(0), observed, (1, 5)) == ((1.0, 5.0), "--scale")
    with pytest.raises(UserInputError, match="--scale 5 1: LOW must be below HIGH"):
        choose_scale("csv", np.zeros(0), observed, (5, 1))


@pytest.mark.parametrize("changes, hint", [({}, True), ({"pixel_size": 64}, False),
                                           ({"regressor.use_tcab": False}, False)])
def test_the_first_epoch_gives_an_estimate_for_the_whole_run(monkeypatch, changes, hint):
    import torch

    import diffvqa_cache.training.clock as fit

    clock_times = iter([100.0, 160.0])  # the first epoch of split 1 of 10 takes 60 s
    monkeypatch.setattr(fit.time, "perf_counter", lambda: next(clock_times))
    cfg = FitConfig().with_overrides(changes)
    clock = fit.EpochClock(10, 30, cfg, torch.device("cpu"), False, cfg.pixel_size or 224)
    clock.start(0)
    clock.epoch_done({"loss": 1.0})
    clock.epoch_done({"loss": 1.0})  # said once
    assert clock.line.startswith("first epoch: 60 s; the whole fit (10 split(s) x 30 epochs) needs about 5.0 h more")
    assert ("cheaper: --set pixel_size=64 (TCAB on 64 px views) or --set regressor.use_tcab=false" in clock.line) == hint


def test_cli_fit_scale_is_recorded(sample_cache, fast_fit, tmp_path):
    from typer.testing import CliRunner

    import cli

    res = CliRunner().invoke(cli.app, ["fit", "--cache", str(sample_cache(limit=16).cache_dir), "--out",
                                       str(tmp_path / "run"), "--scale", "0", "10", "--splits", "1", "--epochs", "1",
                                       "--set", "regressor.use_tcab=false", "--set", "train.batch_size=8"])
    assert res.exit_code == 0, res.output
    assert "scale: MOS 0-10 (--scale)" in res.stderr
    assert RunConfig.read(tmp_path / "run").scale == (0.0, 10.0)
    res = CliRunner().invoke(cli.app, ["fit", "--cache", str(sample_cache(limit=16).cache_dir), "--out",
                                       str(tmp_path / "run2"), "--scale", "5", "1"])
    assert res.exit_code == 2 and "--scale 5 1: LOW must be below HIGH (e.g. --scale 1 5)" in res.output
    assert not (tmp_path / "run2").exists()


def test_resuming_may_move_the_run_but_not_change_its_numbers(fast_run):
    """The settings declared `numbers=False` (data, memory_gb, verify, train.device, train.eval_batch_size)
    may change on --resume, as adapt's device may; a setting that changes the numbers may not."""
    from diffvqa_cache.run.folder import check_resumable

    _, out = fast_run
    run = RunConfig.read(out)
    placed = run.fit.with_overrides({"data": "stream", "memory_gb": 2, "verify": False, "train.device": "cuda:1",
                                     "train.eval_batch_size": 7})
    check_resumable(out, run.replace(fit=placed, training=placed.train))
    other = run.fit.with_overrides({"train.lr": 0.5})
    with pytest.raises(UserInputError, match=r"\(training, fit.train\)"):
        check_resumable(out, run.replace(fit=other, training=other.train))
