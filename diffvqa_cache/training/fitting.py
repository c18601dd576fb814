"""One fit's settings (`FitConfig`) and training and scoring one split (`fit_split`): shared by fit and
sweep. The run folder a fit writes (its record, manifest, models) is `diffvqa_cache.run.folder`'s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffvqa_cache.devices import resolve_device
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.training.loop import check_finite, predict_raw, train
from diffvqa_cache.training.metrics import compute_metrics_ids
from diffvqa_cache.training.protocols import Split, carve_validation
from diffvqa_cache.training.regressor import DiffVQARegressor
from diffvqa_cache.training.settings import FitConfig
from diffvqa_cache.training.source import FeatureSource

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
    device = resolve_device(device or cfg.train.device)
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
