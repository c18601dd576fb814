"""Show what the features saw: a frame's resized view, SD's reconstruction of it, and their error, with PSNR/SSIM.

The reverse chain is stage one's own (FeatureExtractor, same start-noise seeds), so the picture is the
decoded F_Latent of that view as `extract` with the same settings caches it (fp16). Besides PSNR/SSIM
against the view, the report gives the VAE's own ceiling (vae_psnr: decode(z0) vs the view), the chain's
error against it (psnr_vs_vae) and in latent space (latent_mse), which isolate what adaptation changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffvqa_cache import __version__
from diffvqa_cache.cache.settings import (
    DTYPES,
    LATENTS,
    METHOD,
    NOISE_MODES,
    SAMPLERS,
    TIMESTEP_SPACINGS,
    require_input_dependence,
)
from diffvqa_cache.config import one_of
from diffvqa_cache.datasets import safe_key
from diffvqa_cache.devices import resolve_device
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.extraction.adaptation import psnr, ssim
from diffvqa_cache.extraction.video import load_video_frames
from diffvqa_cache.extraction.views import make_views
from diffvqa_cache.files import atomic_path, write_json_atomic
from diffvqa_cache.progress import err
from diffvqa_cache.seeds import noise_seed

ERROR_GAIN = 4.0  # the error map shows min(255, 4 * |view - reconstruction|), channel mean, as a heat map


@dataclass
class ReconstructResult:
    png: Path
    json: Path
    report: dict
    latents: torch.Tensor  # z0_hat (N, 4, h, w) fp16, as stage one caches it

    def summary(self) -> str:
        r = self.report
        lines = [f"frame {f['frame_index']:>6}: PSNR {f['psnr']:.2f} dB  SSIM {f['ssim']:.4f}" for f in r["frames"]]
        lines.append(f"mean        : PSNR {r['mean']['psnr']:.2f} dB  SSIM {r['mean']['ssim']:.4f}")
        return "\n".join(lines)


def error_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 RGB heat map (inferno) of the channel-mean absolute error, amplified by ERROR_GAIN."""
    from matplotlib import colormaps

    e = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(-1)
    e = np.clip(e * ERROR_GAIN / 255.0, 0.0, 1.0)
    return (colormaps["inferno"](e)[..., :3] * 255).round().astype(np.uint8)


@torch.no_grad()
def decode_latents(bb, z: torch.Tensor, device: torch.device) -> np.ndarray:
    """Scaled latents (N, 4, h, w) -> uint8 (N, H, W, 3) images through the VAE decoder."""
    x = bb.vae.decode(z.float().to(device) / bb.scaling_factor).sample
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def run_reconstruct(video: Path, out: Path, model: str = "tiny", controller: str | None = None,
                    revision: str | None = None, frames: int = 1, steps: int = 50, sampler: str = "ddim",
                    seed: int = 0, key: str | None = None, view_size: int | None = None, dtype: str = "fp32",
                    device: str = "auto", strength: float = 1.0, noise: str = "shared",
                    timestep_spacing: str = METHOD["timestep_spacing"], latent: str = METHOD["latent"]) -> ReconstructResult:
    """Reconstruct N uniformly sampled frames of VIDEO through stage one's chain; write OUT (PNG) and OUT.json."""
    from PIL import Image

    from diffvqa_cache.extraction.backbone import load_backbone
    from diffvqa_cache.extraction.features import FeatureExtractor

    require_input_dependence(controller, strength)
    one_of("--sampler", sampler, SAMPLERS)
    one_of("--dtype", dtype, DTYPES)
    one_of("--noise", noise, NOISE_MODES)
    one_of("--timestep-spacing", timestep_spacing, TIMESTEP_SPACINGS)
    one_of("--latent", latent, LATENTS)
    if frames < 1 or steps < 1:
        raise UserInputError("--frames and --steps must be >= 1")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserInputError(f"--out {out}: give a .png file name")
    key = key or safe_key(Path(video).name)
    # 1. frames and their resized views, exactly as stage one cuts them
    dev = resolve_device(device)
    bb = load_backbone(model, controller, revision)
    size = view_size or bb.native_size
    if size % 8:
        raise UserInputError(f"--view-size must be a multiple of 8, got {size}")
    pixels, indices, _info, _ = load_video_frames(video, n_frames=frames)
    views = make_views(pixels, size, 1, seed, noise, key)["S"]
    # 2. stage one's reverse chain with stage one's start-noise seeds; decode z0_hat
    fx = FeatureExtractor(bb, steps=steps, sampler=sampler, grid=1, dtype=dtype, device=dev, strength=strength,
                          timestep_spacing=timestep_spacing, latent=latent)
    seeds = [noise_seed(seed, noise, key, t, "S", 0) for t in range(len(indices))]
    latents = fx(torch.from_numpy(views), seeds).latent
    recon = decode_latents(bb, latents, dev)
    # the VAE alone (decode(z0)) bounds what any chain can reach: report it, and the chain's error against it
    z0 = fx.encode(torch.from_numpy(views)).cpu()
    vae_only = decode_latents(bb, z0, dev)
    # 3. one row per frame: view | reconstruction | error map; metrics per frame and mean
    rows, per_frame = [], []
    for n, (fi, v, r) in enumerate(zip(indices, views, recon)):
        rows.append(np.concatenate([v, r, error_map(v, r)], axis=1))
        per_frame.append({"frame_index": int(fi), "psnr": psnr(v, r), "ssim": ssim(v, r),
                          "vae_psnr": psnr(v, vae_only[n]), "psnr_vs_vae": psnr(vae_only[n], r),
                          "latent_mse": float(((latents[n].float() - z0[n]) ** 2).mean())})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Image.fromarray(np.concatenate(rows, axis=0)).save(tmp, format="PNG")
    report = {
        "video": str(video), "key": key, "model": model, "model_id": bb.model_id, "controller": controller,
        "controller_id": bb.controller_id, "steps": steps, "sampler": sampler, "timestep_spacing": timestep_spacing,
        "latent": latent, "seed": seed,
        "view_size": size, "dtype": dtype, "error_gain": ERROR_GAIN, "frames": per_frame,
        "mean": {m: float(np.mean([f[m] for f in per_frame])) for m in per_frame[0] if m != "frame_index"},
        "columns": ["view", "reconstruction", "abs error"], "package_version": __version__,
    }
    json_path = out.with_suffix(".json")
    write_json_atomic(json_path, report)
    if bb.is_tiny:
        err.print("[yellow]--model tiny: a small random test model; its reconstructions are not images of note[/]")
    return ReconstructResult(out, json_path, report, latents)
