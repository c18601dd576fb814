"""Synthetic caches with a real cache's layout and SD's feature shapes, for benchmarks and tests.

Written through the same code as a real extraction (`CacheConfig`, `write_labels`, `write_shard`, the
manifest), so `FeatureCache`, `load_table` and `fit` read them as real ones. Each video carries a learnable
signal: an offset proportional to (mos - 3) on a few channels of every feature and on the pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.cache.folder import CacheDir, VideoFeatures, plan_shards, write_labels, write_shard
from diffvqa_cache.cache.settings import CacheConfig, ExtractConfig, ModelIdentity

SD_MS_CHANNELS = (1280, 1280, 640, 320)  # UNet up blocks 0-3 of SD 2.x/1.x (16, 32, 64, 64 px at 512, pooled)
LSVQ_SPLITS = (("train", 0.72), ("test", 0.19), ("test1080p", 0.09))  # LSVQ's 28056 / 7182 / 3573 videos


def sd_ms_sides(latent_hw: int) -> tuple[int, ...]:
    """Sides of SD's four up-block outputs for a latent of `latent_hw` (16, 32, 64, 64 at 512 px)."""
    return latent_hw // 4, latent_hw // 2, latent_hw, latent_hw


@dataclass
class SyntheticCache:
    cache_dir: Path
    write_seconds: float  # inside write_shard
    nbytes: int  # shard bytes written


def synthetic_video(key: str, rng: np.random.Generator, mos: float, frames: int, crops: int, grid: int,
                    latent_hw: int, pixel_size: int, ms_channels=SD_MS_CHANNELS, base: dict | None = None) -> VideoFeatures:
    """One video's features as the extractor writes them (fp16 features, uint8 pixels).

    `base` (big noise blocks from `noise_base`) is reused at a random offset so large caches are cheap."""
    sig = np.float16((mos - 3.0) * 0.5)

    def noise(name, shape):
        n = int(np.prod(shape))
        if base is not None and name in base:
            start = int(rng.integers(0, len(base[name]) - n + 1))
            a = base[name][start:start + n].reshape(shape).copy()
        else:
            a = rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
        a[:, :, :8] += sig
        return a

    branches = {}
    for b, k in (("S", 1), ("D", crops)):
        pix = rng.integers(0, 200, (frames, k, 3, pixel_size, pixel_size), dtype=np.uint8) if base is None else \
            np.broadcast_to(base["pixels"][:pixel_size, :pixel_size], (frames, k, 3, pixel_size, pixel_size)).copy()
        pix += np.uint8(round((mos - 1.0) * 12))
        branches[b] = BranchFeatures(latent=noise("latent", (frames, k, 4, latent_hw, latent_hw)),
                                     ms=tuple(noise(f"ms{lv}", (frames, k, c, min(grid, side), min(grid, side)))
                                              for lv, (c, side) in enumerate(zip(ms_channels, sd_ms_sides(latent_hw)))),
                                     pixels=pix)
    fidx = ((np.arange(frames) + 0.5) * 240 / frames).astype(np.int32)
    return VideoFeatures(key, fidx, branches, rng.integers(0, 100, (frames, crops, 2), dtype=np.int32))


def noise_base(rng: np.random.Generator, grid: int, latent_hw: int, pixel_size: int, ms_channels=SD_MS_CHANNELS,
               pool: int = 8) -> dict:
    """Big reusable noise blocks (about `pool` videos' worth per feature) for `synthetic_video`."""
    per = {"latent": 4 * latent_hw ** 2, **{f"ms{lv}": c * grid * grid for lv, c in enumerate(ms_channels)}}
    base = {n: rng.standard_normal(v * 8 * pool, dtype=np.float32).astype(np.float16) for n, v in per.items()}
    base["pixels"] = rng.integers(0, 200, (pixel_size, pixel_size), dtype=np.uint8)
    return base


def write_synthetic_cache(out: Path | str, n_videos: int, frames: int = 8, crops: int = 1, grid: int = 8,
                          latent_hw: int = 64, pixel_size: int = 224, shard_size: int = 32, seed: int = 0,
                          ms_channels=SD_MS_CHANNELS, splits=None, reuse_noise: bool = True,
                          dataset: str = "synthetic", on_shard=None) -> SyntheticCache:
    """A cache of `n_videos` synthetic videos under OUT/<dataset>/<fingerprint>.

    `splits`: None (no official split) or [(name, fraction)], e.g. `LSVQ_SPLITS`, assigned in label order.
    F_MS maps have the sides SD's up blocks would have, pooled to `grid` (smaller ones kept)."""
    cfg = ExtractConfig(model="synthetic", frames=frames, crops=crops, grid=grid, pixel_size=pixel_size,
                        shard_size=shard_size, view_size=latent_hw * 8, seed=seed)
    identity = ModelIdentity(f"synthetic-{seed}-{'-'.join(map(str, ms_channels))}", "zero-init", latent_hw * 8)
    config = CacheConfig.create(cfg, identity, dataset, (1.0, 5.0))
    cache_dir = Path(out) / dataset / config.fingerprint
    (cache_dir / "shards").mkdir(parents=True, exist_ok=True)
    config.save(cache_dir / "config.json")
    rng = np.random.default_rng(seed)
    keys = [f"v{i:06d}" for i in range(n_videos)]
    mos = rng.uniform(1.0, 5.0, n_videos).round(3)
    split_of = [""] * n_videos
    if splits:
        bounds = np.cumsum([0] + [round(f * n_videos) for _, f in splits])
        for (name, _), lo, hi in zip(splits, bounds, bounds[1:]):
            split_of[lo:hi] = [name] * (min(hi, n_videos) - lo)
    write_labels(cache_dir / "labels.csv", [(k, float(m), s, f"/synthetic/{k}.mp4") for k, m, s in zip(keys, mos, split_of)])
    plan = plan_shards(keys, shard_size)
    base = noise_base(rng, grid, latent_hw, pixel_size, ms_channels) if reuse_noise else None
    cdir = CacheDir(cache_dir)
    write_s, nbytes = 0.0, 0
    for i, shard_keys in enumerate(plan):
        vids = [synthetic_video(k, rng, float(mos[i * shard_size + j]), frames, crops, grid, latent_hw, pixel_size,
                                ms_channels, base) for j, k in enumerate(shard_keys)]
        t0 = time.perf_counter()
        rec = write_shard(cdir.shard_path(i), i, config.fingerprint, vids, [], shard_keys)
        write_s += time.perf_counter() - t0
        nbytes += rec["bytes"]
        if on_shard is not None:
            on_shard(i, len(plan))
    cdir.write_manifest(config, plan, [])
    return SyntheticCache(cache_dir, write_s, nbytes)


def save_sd_folder(root: Path, vae, unet, text_config: dict, max_length: int) -> Path:
    """A diffusers SD folder as StableDiffusionPipeline.save_pretrained lays it out, from given VAE and UNet
    modules, a CLIP text encoder built from `text_config` (seeded random weights) and a 7-token toy
    tokenizer: for tests and benchmarks of the real-weights loading path."""
    import json

    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from diffvqa_cache.extraction.backbone import sd_noise_schedule

    root = Path(root)
    vae.save_pretrained(root / "vae")
    unet.save_pretrained(root / "unet")
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler",
                                                                          **sd_noise_schedule()}))
    tok_dir = root / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5, "ab": 6}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\na b\n")
    CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"),
                  model_max_length=max_length).save_pretrained(tok_dir)
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1, **{"vocab_size": len(vocab), **text_config})
                  ).save_pretrained(root / "text_encoder")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root
