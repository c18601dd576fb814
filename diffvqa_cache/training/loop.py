"""Training and evaluation of the regressor on a feature source (`source.FeatureSource`: `data.VideoTable`
in memory or `stream.StreamedTable`): each epoch's batches are drawn first, then read in order through the source's
`batches`, so both sources see the same batches and the streamed one can read ahead."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffvqa_cache.devices import autocast, resolve_device
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.training.losses import quality_loss
from diffvqa_cache.training.metrics import compute_metrics_ids
from diffvqa_cache.training.resume import load_state, save_state
from diffvqa_cache.training.settings import TrainConfig
from diffvqa_cache.training.source import FeatureSource


def predict_raw(model: torch.nn.Module, table: FeatureSource, cfg: TrainConfig, device: torch.device) -> np.ndarray:
    """Raw model outputs per video, averaged over the cached crops (evaluation averages crops)."""
    return predict_raw_many([model], table, cfg, device)[0]


def predict_raw_many(models: list[torch.nn.Module], table: FeatureSource, cfg: TrainConfig,
                     device: torch.device) -> np.ndarray:
    """(models, videos) raw outputs, averaged over the crops, from one pass over the table's batches."""
    return model_outputs(models, table, device, cfg.eval_batch_size, cfg.precision(device))["score"]


@torch.no_grad()
def model_outputs(models: list[torch.nn.Module], table: FeatureSource, device: torch.device, batch_size: int,
                  precision: str, keys: tuple[str, ...] = ("score",)) -> dict[str, np.ndarray]:
    """{key: (models, videos, ...) float64}: the models' outputs `keys` averaged over the crops, from one
    pass over the table's batches (every model reads each batch)."""
    for model in models:
        model.eval()
    n_crops = max(table.n_crops.values())
    plan = [(np.arange(s, min(s + batch_size, len(table))), c)
            for s in range(0, len(table), batch_size) for c in range(n_crops)]
    out: dict[str, np.ndarray] = {}
    acc: dict = {}
    for (idx, c), batch in zip(plan, table.batches(plan, device)):
        for j, model in enumerate(models):
            with autocast(device, precision):
                res = model(batch)
            for key in keys:
                value = res[key].float().cpu().numpy()
                acc[j, key] = value if c == 0 else acc[j, key] + value
                if c == n_crops - 1:
                    if key not in out:
                        out[key] = np.zeros((len(models), len(table), *value.shape[1:]), dtype=np.float64)
                    out[key][j, idx] = acc[j, key].astype(np.float64) / n_crops
    return out


def check_finite(pred: np.ndarray, keys: list[str], where: str) -> None:
    bad = [k for k, p in zip(keys, pred) if not np.isfinite(p)]
    if bad:
        raise UserInputError(f"{where}: {len(bad)} predictions are NaN/Inf (videos {bad[:5]}); check the cache "
                             "with `diffvqa-cache cache verify` or lower the learning rate")


@dataclass
class TrainResult:
    history: list[dict]  # per epoch: epoch, loss, lr, seconds, (val_srcc)
    best_epoch: int
    mos_mean: float
    mos_std: float
    scale: tuple[float, float]  # raw output -> MOS: a * raw + b, fitted on the training set
    resumed_after: int | None = None  # the saved epoch this training continued from


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as in the field: weight decay on weight matrices and kernels only; none on biases, norm
    weights, other 1-D parameters and those marked `_no_weight_decay` (Mamba's A_log and D, TCAB's
    position embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or name.endswith(".bias") or getattr(p, "_no_weight_decay", False)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(model: torch.nn.Module, train_table: FeatureSource, cfg: TrainConfig, seed: int,
          val_table: FeatureSource | None = None, on_epoch=None, state_dir: Path | None = None) -> TrainResult:
    """Fit `model` in place; keeps the weights of the best validation epoch when a validation set is given.

    With `state_dir`, the state is saved there after every epoch and, when a state is there already,
    training continues after its epoch (the result is the same as without the interruption)."""
    device = resolve_device(cfg.device)
    model.to(device)
    gen = np.random.default_rng(seed)
    torch.manual_seed(seed)
    mos_mean, mos_std = float(train_table.mos.mean()), float(train_table.mos.std() + 1e-8)
    mos_z = torch.from_numpy((train_table.mos - mos_mean) / mos_std).float()
    steps_per_epoch = max(1, math.ceil(len(train_table) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / max(1, warm) if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    n_crops = max(train_table.n_crops.values())
    history, best, best_state, best_epoch, stale, stopped, start = [], -math.inf, None, cfg.epochs - 1, 0, False, 0
    resumed = load_state(state_dir, model, opt, sched, gen)
    if resumed is not None:
        last, info, best_state = resumed
        history, best_epoch, stale, stopped = info["history"], info["best_epoch"], info["stale"], info["stopped"]
        best, start = -math.inf if info["best"] is None else info["best"], last + 1
    for epoch in range(start, cfg.epochs):
        if stopped:
            break
        model.train()
        t0 = time.perf_counter()
        order = gen.permutation(len(train_table))
        plan = []
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            if len(idx) < 2:  # correlation losses need two videos
                continue
            # one crop per (video, frame), drawn anew every epoch
            plan.append((idx, gen.integers(0, n_crops, size=(len(idx), 1)) if n_crops > 1 else 0))
        losses = []
        for (idx, _), batch in zip(plan, train_table.batches(plan, device)):
            with autocast(device, cfg.precision(device)):
                pred = model(batch)["score"].float()
            loss = quality_loss(cfg.loss, pred, mos_z[idx].to(device), cfg.rank_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
               "seconds": time.perf_counter() - t0}
        if not np.isfinite(row["loss"]):
            raise UserInputError(f"training diverged at epoch {epoch} (loss {row['loss']}); lower --lr")
        if val_table is not None and len(val_table) >= 3:
            vp = predict_raw(model, val_table, cfg, device)
            check_finite(vp, val_table.keys, "validation")
            row["val_srcc"] = compute_metrics_ids(vp, val_table.mos, val_table.keys)["srcc"]
            if row["val_srcc"] > best:
                best, best_epoch, stale = row["val_srcc"], epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        history.append(row)
        stopped = bool(cfg.patience and stale >= cfg.patience)
        if state_dir is not None:
            save_state(state_dir, epoch, model, opt, sched, gen, {
                "history": history, "best": None if best == -math.inf else best, "best_epoch": best_epoch,
                "stale": stale, "stopped": stopped}, best_state)
        if on_epoch is not None:
            on_epoch(row)
    if best_state is not None:
        model.load_state_dict(best_state)
    raw = predict_raw(model, train_table, cfg, device)
    check_finite(raw, train_table.keys, "training set")
    a, b = np.polyfit(raw, train_table.mos, 1) if np.std(raw) > 0 else (0.0, mos_mean)
    return TrainResult(history, best_epoch, mos_mean, mos_std, (float(a), float(b)),
                       None if resumed is None else resumed[0])
