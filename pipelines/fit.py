"""Stage two: train the regressor over a cache under a protocol and write a self-describing run directory.

Protocols: `random` (repeated 80/20 splits by video, median over splits), `lsvq` (the official split:
train -> test and test1080p), `cross` (all of the cache -> all of --test-cache); `--init` fine-tunes
from an earlier run. The test split is only ever used for reporting.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffvqa_cache import __version__
from diffvqa_cache.cache import FeatureCache, write_json_atomic
from diffvqa_cache.checkpoint import load_checkpoint, save_checkpoint
from diffvqa_cache.data import LoadSpec, VideoTable, estimate_bytes, load_table
from diffvqa_cache.errors import CacheError, UserInputError
from diffvqa_cache.metrics import METRIC_KEYS, compute_metrics_ids, summarize
from diffvqa_cache.progress import bar
from diffvqa_cache.regressor import DiffVQARegressor, RegressorConfig
from diffvqa_cache.devices import resolve_device
from diffvqa_cache.training import TrainConfig, check_finite, predict_raw, train

PROTOCOLS = ("auto", "random", "lsvq", "cross")


@dataclass
class FitConfig:
    """Everything a fit depends on; saved as the run's config.json."""

    regressor: RegressorConfig = field(default_factory=RegressorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: str = "auto"  # auto: lsvq if the cache has the official split, cross with a test cache, else random
    splits: int = 10  # random protocol: number of repeated splits
    test_fraction: float = 0.2
    seed: int = 0  # seeds splits, initialisation and batches (split i uses seed + i)
    grid: int | None = None  # load-time pooling of F_MS / F_Latent (None: the cache's grid)
    num_frames: int | None = None  # frames per video used (None: all cached)
    pixel_size: int = 64  # TCAB input side (the cached view pixels are resized at load time)
    memory_gb: float = 12.0  # in-memory budget for the feature tables
    verify: bool = True  # re-hash every shard before training (catches silent corruption)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise UserInputError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.splits < 1 or not 0 < self.test_fraction < 1:
            raise UserInputError(f"need splits >= 1 and 0 < test_fraction < 1, got {self.splits}, {self.test_fraction}")

    def load_spec(self) -> LoadSpec:
        r = self.regressor
        return LoadSpec(branches=r.branches, ms_levels=tuple(r.ms_levels), use_latent=r.use_latent,
                        use_pixels=r.use_tcab, grid=self.grid, pixel_size=self.pixel_size, num_frames=self.num_frames)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["regressor"], d["train"] = self.regressor.to_dict(), self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        d = dict(d)
        reg = RegressorConfig.from_dict(d.pop("regressor", {}) or {})
        tr = TrainConfig.from_dict(d.pop("train", {}) or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"regressor", "train"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserInputError(f"unknown fit settings {unknown}; known: top-level {sorted(known)}, "
                                 f"regressor.*, train.*")
        return cls(regressor=reg, train=tr, **d)

    def with_overrides(self, overrides: dict) -> "FitConfig":
        """Apply {'train.epochs': 5, 'use_tcab': False, ...}; a bare name must match one field."""
        d = self.to_dict()
        sections = {"regressor": d["regressor"], "train": d["train"]}
        for key, value in overrides.items():
            if "." in key:
                sec, name = key.split(".", 1)
                if sec not in sections or name not in sections[sec]:
                    raise UserInputError(f"unknown setting {key!r}")
                sections[sec][name] = value
            elif key in d and key not in sections:
                d[key] = value
            else:
                hits = [s for s in sections if key in sections[s]]
                if len(hits) != 1:
                    raise UserInputError(f"unknown setting {key!r}; use regressor.<name>, train.<name> or a top-level name")
                sections[hits[0]][key] = value
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
            if k in ("regressor", "train") and isinstance(v, dict):
                flat.update({f"{k}.{n}": x for n, x in v.items()})
            else:
                flat[k] = v
        cfg = cfg.with_overrides(flat)
    return cfg.with_overrides(overrides)


# ---------------------------------------------------------------- splits
def random_splits(keys: list[str], n_splits: int, test_fraction: float, seed: int) -> list[dict]:
    """Repeated random splits by video: each video is in exactly one side of each split."""
    out = []
    for i in range(n_splits):
        perm = np.random.default_rng([seed, i]).permutation(len(keys))
        n_test = max(1, round(test_fraction * len(keys)))
        out.append({"name": f"split-{i:02d}", "train": sorted(keys[j] for j in perm[n_test:]),
                    "test": {"test": sorted(keys[j] for j in perm[:n_test])}})
    return out


def carve_validation(train_keys: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    if fraction <= 0:
        return train_keys, []
    perm = np.random.default_rng([seed, 10_000]).permutation(len(train_keys))
    n_val = max(3, round(fraction * len(train_keys)))
    return sorted(train_keys[j] for j in perm[n_val:]), sorted(train_keys[j] for j in perm[:n_val])


def plan_splits(cfg: FitConfig, cache: FeatureCache, test_cache: FeatureCache | None) -> tuple[str, list[dict]]:
    protocol = cfg.protocol
    splits_present = {cache.labels[k]["split"] for k in cache.keys}
    if protocol == "auto":
        protocol = "cross" if test_cache is not None else ("lsvq" if "test" in splits_present else "random")
    if protocol == "cross":
        if test_cache is None:
            raise UserInputError("protocol cross needs --test-cache")
        return protocol, [{"name": "cross", "train": list(cache.keys), "test": {test_cache.config["dataset"]: list(test_cache.keys)}}]
    if protocol == "lsvq":
        by = {s: [k for k in cache.keys if cache.labels[k]["split"] == s] for s in ("train", "test", "test1080p")}
        if not by["train"] or not by["test"]:
            raise UserInputError(f"{cache.path}: the lsvq protocol needs train and test videos in labels.csv's split "
                                 f"column (found {sorted(splits_present)}); use --protocol random")
        tests = {s: by[s] for s in ("test", "test1080p") if by[s]}
        return protocol, [{"name": "lsvq", "train": by["train"], "test": tests}]
    if len(cache) < 10:
        raise UserInputError(f"{cache.path}: only {len(cache)} videos, too few for random {cfg.test_fraction:.0%} test splits")
    return "random", random_splits(list(cache.keys), cfg.splits, cfg.test_fraction, cfg.seed)


# ---------------------------------------------------------------- run
def open_run_model(run: Path, fingerprint: str, device) -> list[tuple[torch.nn.Module, dict]]:
    models = sorted((Path(run) / "models").glob("*.safetensors"))
    if not models:
        raise UserInputError(f"{run}: no models/*.safetensors; pass a run directory written by `diffvqa-cache fit`")
    return [load_checkpoint(m, fingerprint, device) for m in models]


@dataclass
class FittedSplit:
    entry: dict  # split, n_train, n_val, best_epoch, and the metrics of each test set
    rows: list[tuple]  # (video, mos, pred, split, test set) for every test video
    model: torch.nn.Module
    result: object  # training.TrainResult


def fit_split(table: VideoTable, split: dict, cfg: FitConfig, seed: int, test_table: VideoTable | None = None,
              init_state: dict | None = None, device=None, on_epoch=None) -> FittedSplit:
    """Train one model on a split's train videos (validation carved from them) and score its test sets."""
    device = device or resolve_device(cfg.train.device)
    index = {k: i for i, k in enumerate(table.keys)}
    train_keys, val_keys = carve_validation(split["train"], cfg.train.val_fraction, seed)
    train_t = table.subset(np.array([index[k] for k in train_keys]))
    val_t = table.subset(np.array([index[k] for k in val_keys])) if val_keys else None
    torch.manual_seed(seed)
    model = DiffVQARegressor(cfg.regressor, table.feature_spec())
    if init_state is not None:
        model.load_state_dict(init_state)
    res = train(model, train_t, cfg.train, seed, val_t, on_epoch=on_epoch)
    entry = {"split": split["name"], "n_train": len(train_keys), "n_val": len(val_keys), "best_epoch": res.best_epoch}
    rows = []
    src = test_table if test_table is not None else table
    src_index = {k: i for i, k in enumerate(src.keys)}
    for test_name, keys in split["test"].items():
        tt = src.subset(np.array([src_index[k] for k in keys]))
        pred = predict_raw(model, tt, cfg.train, device) * res.scale[0] + res.scale[1]
        check_finite(pred, tt.keys, f"split {split['name']}")
        entry[test_name] = compute_metrics_ids(pred, tt.mos, tt.keys)
        rows += [(k, float(y), float(p), split["name"], test_name) for k, y, p in zip(tt.keys, tt.mos, pred)]
    return FittedSplit(entry, rows, model, res)


@dataclass
class FitInputs:
    cache: FeatureCache
    test_cache: FeatureCache | None
    protocol: str
    splits: list[dict]
    table: VideoTable
    test_table: VideoTable | None


def load_fit_inputs(cache_path: Path, cfg: FitConfig, test_cache_path: Path | None = None,
                    progress: bool = False) -> FitInputs:
    """Open and check the cache(s), plan the protocol's splits, load the selected features once."""
    cache = FeatureCache(cache_path)
    cache.check_complete(cfg.verify)
    test_cache = FeatureCache(test_cache_path) if test_cache_path else None
    if test_cache is not None:
        test_cache.check_complete(cfg.verify)
        if test_cache.fingerprint != cache.fingerprint:
            raise CacheError(f"--test-cache {test_cache.path} has fingerprint {test_cache.fingerprint}, the training "
                             f"cache {cache.fingerprint}: extract both with the same settings")
    protocol, splits = plan_splits(cfg, cache, test_cache)
    spec = cfg.load_spec()
    need = estimate_bytes(cache, spec) + (estimate_bytes(test_cache, spec) if test_cache else 0)
    if need > cfg.memory_gb * 1e9:
        raise UserInputError(f"the selected features need {need / 1e9:.1f} GB in memory, over memory_gb="
                             f"{cfg.memory_gb}; raise it, or pool more (grid) / use fewer levels or frames")
    with bar("load cache", len(cache.shard_files()), progress) as pb:
        table = load_table(cache, spec, progress=lambda: pb.update(advance=1))
    test_table = load_table(test_cache, spec) if test_cache else None
    return FitInputs(cache, test_cache, protocol, splits, table, test_table)


def run_fit(cache_path: Path, out: Path, cfg: FitConfig, test_cache_path: Path | None = None,
            init: Path | None = None, progress: bool = True) -> dict:
    """Train and evaluate under the protocol; write the run directory; return metrics.json's content."""
    t_start = time.perf_counter()
    # 1. caches, protocol, features in memory (pooling and selection happen at load time)
    inputs = load_fit_inputs(cache_path, cfg, test_cache_path, progress)
    cache, test_cache, protocol, splits = inputs.cache, inputs.test_cache, inputs.protocol, inputs.splits
    table, test_table, spec = inputs.table, inputs.test_table, cfg.load_spec()
    init_models = open_run_model(init, cache.fingerprint, "cpu") if init else None
    out = Path(out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    # 2. the run's config and splits, before any training
    feature_spec = table.feature_spec()
    meta_common = {"regressor": cfg.regressor.to_dict(), "feature_spec": feature_spec,
                   "load_spec": dataclasses.asdict(spec), "fingerprint": cache.fingerprint,
                   "extract": cache.config, "mos_range": cache.config.get("mos_range")}
    run_config = {"fit": cfg.to_dict(), "protocol": protocol, "cache": str(cache.path), "fingerprint": cache.fingerprint,
                  "extract": cache.config, "test_cache": str(test_cache.path) if test_cache else None,
                  "init": str(init) if init else None, "package_version": __version__, "feature_spec": feature_spec}
    write_json_atomic(out / "config.json", run_config)
    write_json_atomic(out / "splits.json", splits)
    device = resolve_device(cfg.train.device)
    per_split, rows, histories = [], [], {}
    # 3. one model per split, checkpoints self-describing
    for si, split in enumerate(splits):
        init_state = init_models[min(si, len(init_models) - 1)][0].state_dict() if init_models else None
        with bar(f"{split['name']} ({si + 1}/{len(splits)})", cfg.train.epochs, progress) as pb:
            fitted = fit_split(table, split, cfg, cfg.seed + si, test_table, init_state, device,
                               on_epoch=lambda r: pb.update(advance=1, info=f"loss {r['loss']:.4f}" + (
                                   f" val SRCC {r['val_srcc']:.3f}" if "val_srcc" in r else "")))
        histories[split["name"]] = fitted.result.history
        meta = {**meta_common, "split": split["name"], "seed": cfg.seed + si, "train": cfg.train.to_dict(),
                "scale": list(fitted.result.scale), "best_epoch": fitted.result.best_epoch,
                "history": fitted.result.history, "test_metrics": {t: fitted.entry[t] for t in split["test"]}}
        save_checkpoint(out / "models" / f"{split['name']}.safetensors", fitted.model.cpu(), meta)
        per_split.append(fitted.entry)
        rows += fitted.rows
    # 4. summary, predictions, plots
    test_names = list(splits[0]["test"])
    summary = {t: summarize([s[t] for s in per_split]) for t in test_names}
    result = {"protocol": protocol, "fingerprint": cache.fingerprint, "splits": per_split, "summary": summary,
              "seconds": time.perf_counter() - t_start}
    write_json_atomic(out / "metrics.json", result)
    _write_predictions(out / "predictions.csv", rows)
    from diffvqa_cache.plots import learning_curves, scatter

    scatter(out / "scatter.png", np.array([r[2] for r in rows]), np.array([r[1] for r in rows]),
            [r[3] if len(test_names) == 1 else r[4] for r in rows],
            f"{cache.config['dataset']} {protocol}: median SRCC {summary[test_names[0]]['srcc']['median']:.3f}")
    learning_curves(out / "learning_curve.png", histories)
    return result


def _write_predictions(path: Path, rows: list[tuple]) -> None:
    tmp = path.with_suffix(".csv.incomplete")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "mos", "pred", "split", "test_set"])
        w.writerows(rows)
    tmp.replace(path)


def format_summary(result: dict, out: Path) -> str:
    lines = [f"protocol {result['protocol']}, {len(result['splits'])} split(s), {result['seconds']:.1f} s; run: {out}"]
    for test, s in result["summary"].items():
        lines.append(f"  {test:10s} " + "  ".join(f"{k.upper()} {s[k]['median']:.4f}" for k in METRIC_KEYS)
                     + f"   (median of {s['n_splits']}; std SRCC {s['srcc']['std']:.4f})")
    lines.append("  files: config.json metrics.json predictions.csv models/ scatter.png learning_curve.png")
    return "\n".join(lines)
