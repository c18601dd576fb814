"""One fit's settings (`FitConfig`), training and scoring one split (`fit_split`), and a fitted run's
record (`RunConfig`, its manifest, `load_run_models`): shared by fit, sweep and predict."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffvqa_cache import __version__
from diffvqa_cache.cache.settings import CacheConfig
from diffvqa_cache.config import Config
from diffvqa_cache.devices import resolve_device
from diffvqa_cache.errors import CacheError, UserInputError
from diffvqa_cache.files import checksum_problems, checksums, write_json_atomic
from diffvqa_cache.training.checkpoint import load_checkpoint
from diffvqa_cache.training.loop import TrainConfig, check_finite, predict_raw, predict_raw_many, train
from diffvqa_cache.training.memory import feature_budget_gb
from diffvqa_cache.training.metrics import compute_metrics_ids
from diffvqa_cache.training.protocols import CROSS_TRAIN, PROTOCOLS, Split, carve_validation
from diffvqa_cache.training.regressor import DiffVQARegressor, RegressorConfig
from diffvqa_cache.training.rules import LoadSpec
from diffvqa_cache.training.source import DATA_PATHS, FeatureSource, open_features

SECTIONS = ("regressor", "train", "finetune")
# The MOS scales of the datasets with an adapter (adapters.py uses the same); others: the observed range
KNOWN_SCALES = {"kvd": ("KoNViD-1k", 1.0, 5.0), "lvqc": ("LIVE-VQC", 0.0, 100.0), "ytugc": ("YouTube-UGC", 1.0, 5.0),
                "lsvq": ("LSVQ", 0.0, 100.0), "sample": ("the sample", 1.0, 5.0)}


def choose_scale(dataset: str, mos: np.ndarray, cached_range, scale: tuple[float, float] | None = None
                 ) -> tuple[tuple[float, float], str]:
    """(low, high) of the MOS scale and where it comes from: `scale` (fit --scale), else the dataset's known
    scale, else the observed range of the labels (`cached_range`, the cache's mos_range)."""
    if scale is not None:
        low, high = map(float, scale)
        if not high > low:
            raise UserInputError(f"--scale {low:g} {high:g}: LOW must be below HIGH (e.g. --scale 1 5)")
        return (low, high), "--scale"
    if dataset in KNOWN_SCALES:
        name, low, high = KNOWN_SCALES[dataset]
        return (low, high), f"{name}'s scale"
    low, high = map(float, cached_range)
    return (low, high), "the observed range of the training labels"

BARE_SECTIONS = ("regressor", "train")  # where a bare --set name is looked up (finetune.* is always spelled out)


@dataclass
class FinetuneConfig(Config):
    """The training settings that differ when a fit starts from an earlier run's models (`fit --init`):
    a lower learning rate, fewer epochs and no warm-up, so that fine-tuning adjusts the pre-trained
    regressor rather than washing it out. Every other training setting is `train`'s."""

    lr: float = 1e-4
    epochs: int = 10
    warmup_epochs: float = 0.0

    def __post_init__(self):
        if not self.lr > 0 or self.epochs < 1 or self.warmup_epochs < 0:
            raise UserInputError(f"finetune needs lr > 0, epochs >= 1 and warmup_epochs >= 0, got {self.lr}, "
                                 f"{self.epochs}, {self.warmup_epochs}")
RUN_FIX = "pass a run directory written by `diffvqa-cache fit`"


@dataclass
class FitConfig(Config):
    """Everything a fit depends on; saved in the run's config.json."""

    regressor: RegressorConfig = field(default_factory=RegressorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # replaces train's lr/epochs/warm-up with --init
    protocol: str = "auto"  # auto: lsvq if the cache has the official split, cross with test caches, else random
    cross_train: str = "train"  # cross: train on the official train part of a cache that has one ("all": every video)
    splits: int = 10  # random protocol: number of repeated splits
    test_fraction: float = 0.2
    seed: int = 0  # seeds splits, initialisation and batches (split i uses seed + i)
    grid: int | None = None  # load-time pooling of F_MS / F_Latent (None: the cache's grid)
    num_frames: int | None = None  # frames per video used (None: all cached)
    # TCAB input side: None = the cache's pixel copy (224 px by default: 14x14 = 196 tokens of 16 px per
    # frame, as VideoMamba sees a frame); smaller values are resized at load time (64 for quick CPU runs).
    pixel_size: int | None = None
    # F_Latent's own load-time grid (None: `grid`, as F_MS): finer keeps more of the 4-channel latent, which
    # the cache holds at full size (64x64 for SD at 512 px); a multiple of the F_MS grid
    latent_grid: int | None = None
    ms_std: bool = False  # F_MS cell means and stds (a cache extracted with --ms-pool mean+std); False: means
    data: str = "auto"  # memory (tables in memory), stream (read from the shards per batch), auto (memory if it fits)
    memory_gb: float | None = None  # budget for the feature data (None: a share of the available memory, see memory.py)
    verify: bool = True  # re-hash every shard before training (catches silent corruption)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise UserInputError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.cross_train not in CROSS_TRAIN:
            raise UserInputError(f"cross_train must be one of {CROSS_TRAIN}, got {self.cross_train!r}")
        if self.splits < 1 or not 0 < self.test_fraction < 1:
            raise UserInputError(f"need splits >= 1 and 0 < test_fraction < 1, got {self.splits}, {self.test_fraction}")
        if self.data not in DATA_PATHS:
            raise UserInputError(f"data must be one of {DATA_PATHS}, got {self.data!r}")
        if self.memory_gb is not None:
            feature_budget_gb(self.memory_gb)

    def budget_gb(self) -> float:
        """`memory_gb`, or its default from the memory available now."""
        return feature_budget_gb(self.memory_gb)

    def load_spec(self, cached_pixel_size: int) -> LoadSpec:
        """What to load from a cache whose view copies are `cached_pixel_size` wide."""
        if self.pixel_size is not None and self.pixel_size > cached_pixel_size:
            raise UserInputError(f"pixel_size {self.pixel_size} is larger than the cache's {cached_pixel_size} px view "
                                 f"copies; use at most {cached_pixel_size} or re-extract with --pixel-size {self.pixel_size}")
        r = self.regressor
        return LoadSpec(branches=r.branches, ms_levels=tuple(r.ms_levels), use_latent=r.use_latent,
                        use_pixels=r.use_tcab, grid=self.grid, pixel_size=self.pixel_size or cached_pixel_size,
                        num_frames=self.num_frames, latent_grid=self.latent_grid, ms_std=self.ms_std)

    def training(self, fine_tuning: bool) -> TrainConfig:
        """The training settings a fit uses: `train`, with `finetune`'s lr, epochs and warm-up when it
        starts from an earlier run's models."""
        if not fine_tuning:
            return self.train
        return self.train.replace(**self.finetune.to_dict())

    def with_overrides(self, overrides: dict) -> "FitConfig":
        """Apply {'train.epochs': 5, 'use_tcab': False, ...}; a bare name must match one field of
        regressor or train (fine-tuning settings are spelled `finetune.lr` etc.)."""
        d = self.to_dict()
        for key, value in overrides.items():
            if "." in key:
                sec, name = key.split(".", 1)
                if sec not in SECTIONS or name not in d[sec]:
                    raise UserInputError(f"unknown setting {key!r}")
                d[sec][name] = value
            elif key in d and key not in SECTIONS:
                d[key] = value
            else:
                hits = [s for s in BARE_SECTIONS if key in d[s]]
                if len(hits) != 1:
                    raise UserInputError(f"unknown setting {key!r}; use regressor.<name>, train.<name>, "
                                         "finetune.<name> or a top-level name")
                d[hits[0]][key] = value
        return FitConfig.from_dict(d)


def load_fit_config(path: Path | None, overrides: dict) -> FitConfig:
    """Defaults, then a YAML file, then explicit overrides."""
    import yaml

    cfg = FitConfig()
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserInputError(f"--config {path}: cannot read it ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserInputError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
        flat = {}
        for k, v in data.items():
            if k in SECTIONS and isinstance(v, dict):
                flat.update({f"{k}.{n}": x for n, x in v.items()})
            else:
                flat[k] = v
        try:
            cfg = cfg.with_overrides(flat)
        except UserInputError as exc:
            raise UserInputError(f"--config {path}: {exc}") from None
    return cfg.with_overrides(overrides)


@dataclass
class FittedSplit:
    entry: dict  # split, n_train, n_val, best_epoch, and the metrics of each test set
    rows: list[tuple]  # (video, mos, pred, split, test set) for every test video
    model: torch.nn.Module
    result: object  # training.TrainResult


def fit_split(table: FeatureSource, split: Split, cfg: FitConfig, seed: int,
              test_tables: dict[str, FeatureSource] | None = None, init_state: dict | None = None, device=None,
              on_epoch=None, state_dir: Path | None = None) -> FittedSplit:
    """Train one model on a split's train videos (validation carved from them) and score its test sets
    (test set `name` is looked up in `test_tables[name]` when there is one, else in `table`). Tables are
    any `FeatureSource` (in memory or streamed); `state_dir`: save the training state there every epoch and
    continue from one found there."""
    device = device or resolve_device(cfg.train.device)
    row_of = {k: i for i, k in enumerate(table.keys)}
    train_keys, val_keys = carve_validation(split.train, cfg.train.val_fraction, seed)
    train_t = table.subset(np.array([row_of[k] for k in train_keys]))
    val_t = table.subset(np.array([row_of[k] for k in val_keys])) if val_keys else None
    torch.manual_seed(seed)
    model = DiffVQARegressor(cfg.regressor, table.feature_spec())
    if init_state is not None:
        model.load_state_dict(init_state)
    res = train(model, train_t, cfg.train, seed, val_t, on_epoch=on_epoch, state_dir=state_dir)
    entry = {"split": split.name, "n_train": len(train_keys), "n_val": len(val_keys), "best_epoch": res.best_epoch}
    rows = []
    for test_name, keys in split.test.items():
        src = (test_tables or {}).get(test_name, table)
        src_row_of = {k: i for i, k in enumerate(src.keys)}
        tt = src.subset(np.array([src_row_of[k] for k in keys]))
        pred = predict_raw(model, tt, cfg.train, device) * res.scale[0] + res.scale[1]
        check_finite(pred, tt.keys, f"split {split.name}")
        entry[test_name] = compute_metrics_ids(pred, tt.mos, tt.keys)
        rows += [(k, float(y), float(p), split.name, test_name) for k, y, p in zip(tt.keys, tt.mos, pred)]
    return FittedSplit(entry, rows, model, res)


@dataclass
class RunConfig(Config):
    """A run directory's config.json: the fit settings, the protocol and the cache it was trained on."""

    fit: FitConfig
    protocol: str
    cache: CacheConfig  # the training cache's identity (its fingerprint is the run's)
    cache_path: str
    feature_spec: dict
    test_cache_paths: list[str] = field(default_factory=list)
    init: str | None = None
    training: TrainConfig | None = None  # the training settings used: fit.train, or with fit.finetune's under init
    data: dict = field(default_factory=dict)  # the data path used: path, budget_gb, need_gb, device
    decoders: dict = field(default_factory=dict)  # {codec: decoder} of the training cache; predict decodes alike
    package_version: str = __version__
    fingerprint: str = ""  # = cache.fingerprint, kept at the top level for tools that grep runs
    scale: tuple[float, float] | None = None  # the MOS scale's limits (fit --scale; None: the cache's mos_range)
    scale_source: str = ""  # why these limits: "--scale", the dataset's known scale, or the observed range
    train_mos: list[float] = field(default_factory=list)  # the training videos' MOS, sorted (predict's percentile)

    @property
    def score_scale(self) -> tuple[float, float]:
        """The limits scores are read against: fit --scale, else the cache's MOS range (runs of earlier versions)."""
        return tuple(map(float, self.scale or self.cache.mos_range))

    @classmethod
    def from_dict(cls, data: dict, what: str | None = None) -> "RunConfig":
        if "extract" in data:  # written by 0.1: "extract" held the cache config, "cache" its path
            data = {**data, "cache_path": data.get("cache"), "cache": data["extract"]}
            del data["extract"]
        if "test_cache" in data:  # 0.1: one test cache path or None
            old = data.pop("test_cache")
            data = {**data, "test_cache_paths": [old] if old else []}
        return super().from_dict(data, what)

    @classmethod
    def read(cls, run: Path | str, flag: str = "--run") -> "RunConfig":
        path = run_folder(run, flag) / "config.json"
        if not path.is_file():
            raise UserInputError(f"{flag} {run}: no config.json; {RUN_FIX}")
        return cls.load(path)


# ---------------------------------------------------------------- the run's manifest
RUN_MANIFEST = "manifest.json"
RUN_FORMAT = "diffvqa-run-1"
_UNCHECKED: set[str] = set()  # runs without a manifest already reported in this process


def write_run_manifest(run: Path | str, files: list[str] | None) -> None:
    """OUT/manifest.json: size and sha256 of each of the run's `files` (paths relative to the run), written
    last; `files=None` marks a run being written (a fit writes that first, so a killed fit is recognised)."""
    from diffvqa_cache import __version__ as version

    record = {"format": RUN_FORMAT, "package_version": version, "complete": files is not None,
              "files": checksums(run, files or []), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(Path(run) / RUN_MANIFEST, record)


def run_finished(run: Path | str) -> bool:
    """A run whose fit ended: its manifest says complete (runs of earlier versions: metrics.json is there)."""
    try:
        return bool(json.loads((Path(run) / RUN_MANIFEST).read_text()).get("complete"))
    except FileNotFoundError:
        return (Path(run) / "metrics.json").is_file()
    except (OSError, ValueError, AttributeError):
        return False


def verify_run(run: Path | str) -> None:
    """Re-hash every file of a run against its manifest; one-line `CacheError` naming the first damaged,
    missing or foreign (a split model the run did not write) file and the fix. A run of an earlier version
    (no manifest) loads, said once per process."""
    from diffvqa_cache.progress import err

    run = Path(run)
    path = run / RUN_MANIFEST
    refit = "refit the run (the same `fit` command) or restore its files from a backup"
    if not path.is_file():
        if str(run) not in _UNCHECKED:
            _UNCHECKED.add(str(run))
            err.print(f"[yellow]{run} has no {RUN_MANIFEST} (fitted by an earlier version): its files cannot be "
                      "checked for damage; refit it to get one[/]")
        return
    try:
        manifest = json.loads(path.read_text())
        files, complete = dict(manifest["files"]), manifest["complete"]
        if manifest["format"] != RUN_FORMAT:
            raise ValueError(f"format {manifest['format']!r}, this version reads {RUN_FORMAT!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{path}: unreadable run manifest ({exc}); {refit}") from None
    if not complete:
        raise CacheError(f"{run}: its fit has not finished (still running, or killed); wait for it, or rerun the same "
                         "fit command with --resume")
    problems = checksum_problems(run, files)
    foreign = sorted(str(m.relative_to(run)) for m in (run / "models").glob("*.safetensors")
                     if str(m.relative_to(run)) not in files)
    problems += [f"{name}: not written by this run (not in its {RUN_MANIFEST}); delete it" for name in foreign]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        fix = "" if problems[0].endswith("delete it") else f"; {refit}"
        raise CacheError(f"{run}/{problems[0]}{more}{fix}")


def run_folder(run: Path | str, flag: str = "--run") -> Path:
    """`run` unless it is missing, not a folder, or a feature cache: then a `UserInputError` saying which
    (`flag`: the option that named it)."""
    from diffvqa_cache.cache.folder import holds_cache

    run = Path(run)
    if not run.exists():
        raise UserInputError(f"{flag} {run}: no such folder; {RUN_FIX}")
    if not run.is_dir():
        raise UserInputError(f"{flag} {run} is a file, not a folder; {RUN_FIX}")
    if holds_cache(run):
        raise UserInputError(f"{flag} {run} is a feature cache (written by `extract`), not a run: fit a run on it with "
                             f"`diffvqa-cache fit --cache {run} --out RUN`, then pass {flag} RUN")
    return run


def load_run_models(run: Path | str, fingerprint: str, device, verify: bool = True,
                    flag: str = "--run") -> list[tuple[torch.nn.Module, dict]]:
    """The run's models (one per split) with their metadata, after `verify_run` (unless `verify`: the
    caller did it); refuses other features than `fingerprint`. `flag`: the option that named the run."""
    run = run_folder(run, flag)
    if verify:
        verify_run(run)
    models = sorted((run / "models").glob("*.safetensors"))
    if not models:
        raise UserInputError(f"{run}: no models/*.safetensors; {RUN_FIX}")
    return [load_checkpoint(m, fingerprint, device) for m in models]


def score_cached(run: Path | str, cache_path: Path | str, keys: list[str] | None = None, device="auto",
                 memory_gb: float | None = None, verify: bool = True) -> dict[str, float]:
    """{video: score on the MOS scale (mean of the run's split models)} for cached videos (all, or `keys`),
    read through the bounded data path (streamed unless the selection fits `memory_gb`), one pass for all
    models. For scoring the videos of a cache without extracting them again. `verify`: re-hash the
    shards read against the cache's manifest first (the run's files are always checked)."""
    keys_out, per_model = score_cached_per_model(run, cache_path, keys, device, memory_gb, verify)
    return dict(zip(keys_out, per_model.mean(0).tolist()))


def score_cached_per_model(run: Path | str, cache_path: Path | str, keys: list[str] | None = None, device="auto",
                           memory_gb: float | None = None, verify: bool = True) -> tuple[list[str], np.ndarray]:
    """The videos scored and their (n_models, n_videos) scores on the MOS scale, one row per split model."""
    from diffvqa_cache.cache.folder import FeatureCache

    budget_gb = feature_budget_gb(memory_gb, "--memory-gb")
    cache, dev = FeatureCache(cache_path), resolve_device(device)
    models = load_run_models(run, cache.fingerprint, dev)
    if verify:
        cache.verify_shards(keys)
    spec = LoadSpec.from_dict(models[0][1]["load_spec"])
    table = open_features([cache], spec, "stream" if keys is not None else "auto", budget_gb, dev).sources[0]
    if keys is not None:
        row_of = {k: i for i, k in enumerate(table.keys)}
        unknown = [k for k in keys if k not in row_of]
        if unknown:
            raise UserInputError(f"videos {unknown[:3]} are not in cache {cache.path}; `diffvqa-cache cache info` "
                                 "lists what it holds")
        table = table.subset(np.array([row_of[k] for k in keys], dtype=np.int64))
    raw = predict_raw_many([m for m, _ in models], table, TrainConfig(device=str(dev)), dev)
    return list(table.keys), np.stack([r * meta["scale"][0] + meta["scale"][1] for r, (_, meta) in zip(raw, models)])
