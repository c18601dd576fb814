"""Stage zero: train the Controller on a dataset's frames so SD reconstructs them (the loop: extraction.adapt_loop).

The dataset is decoded and VAE-encoded once up front (both views, as stage one cuts them); training then
reads latents from memory. OUT ends up a Controller folder that `extract --controller OUT` loads.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from diffvqa_cache import __version__
from diffvqa_cache.datasets import Dataset
from diffvqa_cache.devices import resolve_device, training_dtype
from diffvqa_cache.extraction.adapt_loop import (
    AdaptResult,
    encode_dataset,
    pick_records,
    start_point,
    train_controller,
)
from diffvqa_cache.extraction.adaptation import Adapter
from diffvqa_cache.extraction.settings import AdaptConfig
from diffvqa_cache.files import folder_lock, write_json_atomic
from diffvqa_cache.progress import err
from diffvqa_cache.scoring.plots import loss_curve

__all__ = ["AdaptResult", "encode_dataset", "pick_records", "run_adapt"]


def run_adapt(dataset: Dataset, cfg: AdaptConfig, out: Path, resume: bool = False,
              progress: bool = True) -> AdaptResult:
    """Train the Controller for cfg.max_steps steps into OUT (resuming from OUT's latest checkpoint if asked).
    OUT is locked for the whole run: a second adapt on it is refused."""
    with folder_lock(out, "adapt"):
        return _run_adapt(dataset, cfg, out, resume, progress)


def _run_adapt(dataset: Dataset, cfg: AdaptConfig, out: Path, resume: bool, progress: bool) -> AdaptResult:
    from diffvqa_cache.extraction.backbone import load_backbone
    from diffvqa_cache.extraction.features import FeatureExtractor

    t0 = time.perf_counter()
    out = Path(out)
    # 1. where to start: fresh, or the latest checkpoint with the same settings
    checkpoint, state = start_point(out, cfg, resume)
    start = state["step"] if state else 0

    # 2. the backbone, and the dataset's latents z0 (computed once, kept in memory)
    device = resolve_device(cfg.device)
    if cfg.dtype != "fp32" and device.type != "cuda":
        err.print(f"[yellow]--dtype {cfg.dtype}: autocast is used on CUDA only; training in fp32 on {device}[/]")
    bb = load_backbone(cfg.model, cfg.controller, cfg.revision)
    if bb.is_tiny:
        err.print("[yellow]--model tiny: a small random test model, for plumbing and tests only[/]")
    fx = FeatureExtractor(bb, steps=1, dtype=training_dtype(device, cfg.dtype), device=device)
    records = pick_records(dataset, cfg.limit, cfg.seed, cfg.split)
    latents, failed = encode_dataset(records, fx, bb.native_size, cfg, progress)
    err.print(f"{len(latents)} views of {len(records) - len(failed)} videos encoded "
              f"({latents.numel() * 4 / 1e6:.0f} MB of latents in memory)")

    # 3. the trainer (restored from the checkpoint when resuming) and the training loop
    trainer = Adapter(bb, latents, cfg, device)
    result = AdaptResult(out, start, start, videos=len(records) - len(failed), views=len(latents), failed=failed)
    rows, el = train_controller(trainer, cfg, out, result, checkpoint, state, progress)

    # 4. the final Controller, how it was made, and the loss curve
    bb.controller.save_pretrained(out)
    tail = [r["loss"] for r in rows[-100:]]
    write_json_atomic(out / "adapt_config.json", {
        **cfg.to_dict(), "model_id": bb.model_id, "init_controller_id": bb.controller_id, "dataset": dataset.name,
        "splits_seen": sorted({r.split or "(no official split)" for r in records}), "dataset_root": str(dataset.root), "videos": result.videos, "views": result.views, "failed": failed,
        "steps": cfg.max_steps, "final_loss": rows[-1]["loss"], "final_loss_mean100": float(np.mean(tail)),
        "prediction_type": trainer.prediction, "seconds": el, "package_version": __version__,
        "device": str(device), "torch_version": torch.__version__,
    })
    loss_curve(out / "loss.png", rows)
    result.seconds = time.perf_counter() - t0
    return result
