"""Stage zero's run: which videos adaptation sees, their latents (encoded once), where a run starts and the
training loop that writes OUT/loss.jsonl and the checkpoints (the step itself is Adapter.step, in adaptation).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffvqa_cache import __version__
from diffvqa_cache.datasets import Dataset
from diffvqa_cache.errors import DiffVQAError, UserInputError
from diffvqa_cache.extraction.adaptation import Adapter, list_checkpoints
from diffvqa_cache.extraction.per_video import decode_views
from diffvqa_cache.extraction.settings import AdaptConfig
from diffvqa_cache.files import remove_leftovers, write_text_atomic
from diffvqa_cache.progress import bar, err
from diffvqa_cache.seeds import stable_seed


@dataclass
class AdaptResult:
    out: Path
    steps: int  # optimizer steps done in total
    start_step: int  # where this run began (0, or the resumed checkpoint's step)
    losses: list[float] = field(default_factory=list)  # one per step of this run
    videos: int = 0
    views: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        last = self.losses[-min(len(self.losses), 100):] if self.losses else [float("nan")]
        return (f"{self.out}: Controller trained to step {self.steps} (this run from {self.start_step}) on "
                f"{self.views} views of {self.videos} videos, {len(self.failed)} failed; "
                f"final loss {np.mean(last):.4g} (mean of last {len(last)}) in {self.seconds:.1f} s")


def pick_records(dataset: Dataset, limit: int | None, seed: int, split: str = "all") -> list:
    """The records of `split` ("train": the official train split; "auto": that where the dataset has one),
    or a seeded random subset of `limit` of them (in label-file order)."""
    records = dataset.records
    official = any(r.split == "train" for r in records)
    if split == "train" and not official:
        raise UserInputError(f"--split train: {dataset.name} has no official train split; use --split all (adaptation "
                             "is label-free, so it may see every video of a random-split dataset)")
    if split == "train" or (split == "auto" and official):
        records = [r for r in records if r.split == "train"]
    if limit is None or limit >= len(records):
        return list(records)
    rng = np.random.default_rng(stable_seed("adapt-videos", seed))
    keep = np.sort(rng.choice(len(records), size=limit, replace=False))
    return [records[i] for i in keep]


def encode_dataset(records: list, fx, size: int, cfg: AdaptConfig, progress: bool = True):
    """Decode every video once, cut both views and encode them: (latents (N, 4, h, w) on the CPU, failures)."""
    latents, failed = [], []
    with bar("decode + encode", len(records), progress) as pbar:
        for rec in records:
            video = decode_views(rec, size, cfg.crops, cfg.seed, cfg.frames)
            if video.error is not None:  # one bad video never stops the others
                failed.append({"video": rec.key, "reason": video.error})
                err.print(f"[red]failed[/] {rec.key}: {video.error}")
                pbar.update(advance=1)
                continue
            imgs = np.concatenate([video.views["S"], video.views["D"].reshape(-1, size, size, 3)])
            for i in range(0, len(imgs), cfg.batch_size):
                latents.append(fx.encode(torch.from_numpy(imgs[i:i + cfg.batch_size])).cpu())
            pbar.update(advance=1)
    if not latents:
        raise UserInputError("no video could be decoded for adaptation; check the dataset (see the failures above)")
    return torch.cat(latents), failed


def read_log(path: Path, upto: int) -> list[dict]:
    """The rows of a loss.jsonl up to step `upto` (a resumed run drops the steps after its checkpoint)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto]


def start_point(out: Path, cfg: AdaptConfig, resume: bool) -> tuple[Path | None, dict | None]:
    """Where a run into OUT starts: (None, None) fresh, or the latest checkpoint and its state.json when
    resuming with the same settings; refused with checkpoints but no --resume, other settings, or a checkpoint
    at or past cfg.max_steps. Creates OUT and removes leftovers of interrupted writes."""
    ckpts = list_checkpoints(out)
    if ckpts and not resume:
        raise UserInputError(f"{out} already holds checkpoints (latest {ckpts[-1].name}); pass --resume to "
                             "continue that run, or choose another --out")
    state = None
    if resume and ckpts:
        state = json.loads((ckpts[-1] / "state.json").read_text())
        old = AdaptConfig.from_dict(state["config"], f"the checkpointed run's settings ({ckpts[-1]})")
        diff = {k: (old.checked()[k], v) for k, v in cfg.checked().items() if old.checked().get(k) != v}
        if diff:
            raise UserInputError(f"--resume: settings differ from the checkpointed run ({diff}); "
                                 f"use the same settings (only {', '.join(cfg.may_change_on_resume())} may change)")
    elif resume:
        err.print(f"[yellow]--resume: no checkpoint in {out} yet; starting from step 0[/]")
    start = state["step"] if state else 0
    if start >= cfg.max_steps:
        raise UserInputError(f"--resume: the checkpoint is already at step {start} >= --max-steps {cfg.max_steps}")
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    return (ckpts[-1] if state else None), state


def train_controller(trainer: Adapter, cfg: AdaptConfig, out: Path, result: AdaptResult,
                     checkpoint: Path | None = None, state: dict | None = None,
                     progress: bool = True) -> tuple[list[dict], float]:
    """Train from result.start_step to cfg.max_steps (restoring `checkpoint` first when resuming): one line
    per step in OUT/loss.jsonl, a checkpoint every save_every steps and at the end. Fills result.losses and
    result.steps; returns the log's rows (earlier steps included) and the training seconds in total."""
    log_path = out / "loss.jsonl"
    start = result.start_step
    seconds = 0.0
    if state:
        trainer.load_checkpoint(checkpoint)
        seconds = float(state.get("seconds", 0.0))
        err.print(f"resuming from {checkpoint} (step {start})")
    rows = read_log(log_path, start)
    write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in rows))

    t_run = time.perf_counter()
    with bar("adapt", cfg.max_steps - start, progress) as pbar, open(log_path, "a") as logf:
        for k in range(start, cfg.max_steps):
            loss, lr = trainer.step(k)
            if not np.isfinite(loss):
                raise DiffVQAError(f"the loss became {loss} at step {k + 1}; lower --lr or use --dtype bf16/fp32")
            el = seconds + time.perf_counter() - t_run
            row = {"step": k + 1, "loss": loss, "lr": lr, "seconds": round(el, 3)}
            rows.append(row)
            logf.write(json.dumps(row) + "\n")
            logf.flush()
            result.losses.append(loss)
            result.steps = k + 1
            pbar.update(advance=1, info=f"loss {loss:.4f} lr {lr:.2e}")
            if cfg.save_every and (k + 1) % cfg.save_every == 0 and k + 1 < cfg.max_steps:
                trainer.save_checkpoint(out, k + 1, {"seconds": el, "package_version": __version__})
    el = seconds + time.perf_counter() - t_run
    trainer.save_checkpoint(out, cfg.max_steps, {"seconds": el, "package_version": __version__})
    return rows, el
