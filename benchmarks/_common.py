"""Shared helpers of the benchmark scripts: timing, machine info, tables, and appending to BENCHMARKS.md.

Every script prints its table and appends one dated section to BENCHMARKS.md (append only, under an
exclusive file lock, so sections written by other scripts or people are never rewritten).
"""

from __future__ import annotations

import fcntl
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nMeasured numbers, appended by the scripts under `benchmarks/` (one dated section per run; "
          "see `docs/performance.md` in the shared docs for what is measured and why). Machines are shared: "
          "each section records the load average; prefer ratios measured in the same run.\n")


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine_info() -> dict:
    import torch

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "ram_gib": round(mem, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_avg_1_5_15": loadavg()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def set_threads(n: int | None) -> int:
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def median_time(fn, repeats: int = 3, warmup: int = 0) -> tuple[float, list[float]]:
    """Median wall seconds of `fn()` over `repeats` calls (after `warmup` untimed calls), and all samples."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def maxrss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fmt(x) -> str:
    if isinstance(x, float):
        if x != x:
            return "-"
        a = abs(x)
        return (f"{x:,.0f}" if a >= 1000 else f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10
                else f"{x:.2f}" if a >= 1 else f"{x:.3g}")
    return str(x)


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table (also readable in a terminal)."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(headers), "| " + " | ".join("-" * w for w in widths) + " |"] + [line(r) for r in cells])


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def append_section(title: str, body: str, info: dict | None = None, path: Path = BENCHMARKS_MD) -> None:
    """Append one dated section (title, machine info, exact command, body) to BENCHMARKS.md, append-only."""
    info = info or machine_info()
    git = ""
    try:
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    head = (f"\n## {title} ({time.strftime('%Y-%m-%d %H:%M')})\n\n"
            f"- machine: {info['machine']}, {info['cpus']} cores, {info['ram_gib']} GiB RAM"
            + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU")
            + f"; python {info['python']}, torch {info['torch']}, default torch threads {info['torch_threads']} (the tables give the count used)\n"
            f"- load average (1/5/15 min) at the end: {loadavg()} (at the start: {info['load_avg_1_5_15']})\n"
            f"- command: `{command_line()}`" + (f" (git {git}, uncommitted benchmark scripts)" if git else "") + "\n\n")
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                f.write(HEADER)
            f.write(head + body.rstrip() + "\n")
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    print(f"appended '{title}' to {path}")


# ---------------------------------------------------------------- the real-size (SD 2.1-base) architecture
PEAK_BF16_TFLOPS = 790.0  # measured dense bf16 matmul rate of the lent H100/H200 (docs/performance.md)


def sd21_base_configs() -> tuple[dict, dict]:
    """(VAE, UNet) constructor kwargs of Stable Diffusion 2.1-base (512 px, latent 4x64x64)."""
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               block_out_channels=(128, 256, 512, 512), sample_size=512, act_fn="silu", scaling_factor=0.18215)
    unet = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, norm_num_groups=32,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                flip_sin_to_cos=True, freq_shift=0, act_fn="silu", center_input_sample=False)
    return vae, unet


def build_sd21_base(device="cpu", seed: int = 0):
    """Random-weight SD 2.1-base VAE, UNet and zero-init Controller (the repo's ControlNet recipe), fp32, eval.

    Returns (vae, unet, controller, null_text (1, 77, 1024)). Random weights cost exactly what real ones do.
    """
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    vae_cfg, unet_cfg = sd21_base_configs()
    torch.manual_seed(seed)
    with torch.device(device):
        vae = AutoencoderKL(**vae_cfg)
        unet = UNet2DConditionModel(**unet_cfg)
        controller = ControlNetModel.from_unet(unet, conditioning_channels=4, conditioning_embedding_out_channels=(16,))
    for m in (vae, unet, controller):
        m.to(device).eval().requires_grad_(False)
    null_text = torch.randn(1, 77, unet_cfg["cross_attention_dim"], device=device) * 0.5
    return vae, unet, controller, null_text


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- synthetic SD-size caches
SD_MS_CHANNELS = (1280, 1280, 640, 320)  # UNet up blocks 0-3 of SD 2.x/1.x (16, 32, 64, 64 px at 512, pooled to grid)


def synthetic_video_arrays(rng, mos: float, frames: int, crops: int, grid: int, latent_hw: int, pixel_size: int,
                           base: dict | None = None) -> dict:
    """One video's arrays as the extractor writes them (fp16 features, uint8 pixels), with a learnable signal.

    `base` (a dict of big noise arrays) is reused with a random roll so large caches are cheap to generate;
    the quality signal is an offset proportional to (mos - 3) on a few channels of every feature and on
    the pixels' brightness.
    """
    import numpy as np

    sig = np.float16((mos - 3.0) * 0.5)
    out = {}
    for b, k in (("S", 1), ("D", crops)):
        shapes = {"latent": (frames, k, 4, latent_hw, latent_hw),
                  **{f"ms{lv}": (frames, k, c, grid, grid) for lv, c in enumerate(SD_MS_CHANNELS)}}
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            if base is not None and name in base:
                src = base[name]
                start = int(rng.integers(0, len(src) - n + 1))
                a = src[start:start + n].reshape(shape).copy()
            else:
                a = rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
            a[:, :, :8] += sig
            out[f"{b}/{name}"] = a
        pix = rng.integers(0, 200, (frames, k, 3, pixel_size, pixel_size), dtype=np.uint8) if base is None else \
            np.broadcast_to(base["pixels"][:pixel_size, :pixel_size], (frames, k, 3, pixel_size, pixel_size)).copy()
        pix += np.uint8(round((mos - 1.0) * 12))
        out[f"{b}/pixels"] = pix
    out["D/crop_origin"] = rng.integers(0, 100, (frames, crops, 2), dtype=np.int32)
    return out


def noise_base(rng, grid: int, latent_hw: int, pixel_size: int, pool: int = 8) -> dict:
    """Big reusable noise blocks (about `pool` videos' worth per feature) for synthetic_video_arrays."""
    import numpy as np

    per = {"latent": 4 * latent_hw ** 2, **{f"ms{lv}": c * grid * grid for lv, c in enumerate(SD_MS_CHANNELS)}}
    base = {n: rng.standard_normal(v * 8 * pool, dtype=np.float32).astype(np.float16) for n, v in per.items()}
    base["pixels"] = rng.integers(0, 200, (pixel_size, pixel_size), dtype=np.uint8)
    return base


def write_synthetic_cache(out, n_videos: int, frames: int = 8, crops: int = 1, grid: int = 8, latent_hw: int = 64,
                          pixel_size: int = 224, shard_size: int = 32, seed: int = 0, reuse_noise: bool = True,
                          dataset: str = "synthetic", on_shard=None):
    """A cache that `FeatureCache` / `load_table` / `run_fit` read as a real one: config.json and labels.csv
    as `prepare_cache` writes them, shards via `cache.write_shard`, then `CacheDir.write_manifest`.

    Returns (cache_dir, seconds spent inside write_shard, bytes written).
    """
    import numpy as np

    from diffvqa_cache import __version__
    from diffvqa_cache.cache import CacheDir, VideoFeatures, write_json_atomic, write_labels, write_shard
    from diffvqa_cache.config import ExtractConfig, fingerprint

    cfg = ExtractConfig(model="synthetic-sd21-base", frames=frames, crops=crops, grid=grid, pixel_size=pixel_size,
                        shard_size=shard_size, view_size=latent_hw * 8, seed=seed)
    model_id = f"synthetic-sd21-base-{seed}"
    fp = fingerprint(cfg, model_id, "zero-init", latent_hw * 8)
    cache_dir = Path(out) / dataset / fp
    (cache_dir / "shards").mkdir(parents=True, exist_ok=True)
    config = {"fingerprint": fp, "extract": cfg.to_dict(), "model_id": model_id, "controller_id": "zero-init",
              "view_size": latent_hw * 8, "pixel_size": pixel_size, "dataset": dataset, "mos_range": [1.0, 5.0],
              "package_version": __version__, "tiny_model": False}
    write_json_atomic(cache_dir / "config.json", config)
    rng = np.random.default_rng(seed)
    keys = [f"v{i:06d}" for i in range(n_videos)]
    mos = rng.uniform(1.0, 5.0, n_videos).round(3)
    write_labels(cache_dir / "labels.csv", [(k, float(m), "", f"/synthetic/{k}.mp4") for k, m in zip(keys, mos)])
    plan = [keys[i:i + shard_size] for i in range(0, n_videos, shard_size)]
    base = noise_base(rng, grid, latent_hw, pixel_size) if reuse_noise else None
    cdir = CacheDir(cache_dir)
    write_s, nbytes = 0.0, 0
    fidx = ((np.arange(frames) + 0.5) * 240 / frames).astype(np.int32)
    for i, shard_keys in enumerate(plan):
        vids = [VideoFeatures(k, fidx.copy(), synthetic_video_arrays(rng, float(mos[i * shard_size + j]), frames, crops,
                                                                     grid, latent_hw, pixel_size, base))
                for j, k in enumerate(shard_keys)]
        t0 = time.perf_counter()
        rec = write_shard(cdir.shard_path(i), i, fp, vids, [], shard_keys)
        write_s += time.perf_counter() - t0
        nbytes += rec["bytes"]
        if on_shard is not None:
            on_shard(i, len(plan))
    cdir.write_manifest(config, plan, [])
    return cache_dir, write_s, nbytes
