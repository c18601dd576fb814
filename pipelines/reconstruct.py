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
from diffvqa_cache.cache.settings import RECONSTRUCT_DEFAULTS, ExtractConfig
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


def reconstruct_settings(video: Path, cfg: ExtractConfig | None = None, cache: Path | None = None,
                         key: str | None = None, **settings) -> tuple[ExtractConfig, str, str | dict, tuple | None]:
    """The settings of a reconstruction: `cfg` (default: extract's with RECONSTRUCT_DEFAULTS), or a cache's,
    changed by `settings` (ExtractConfig fields). Returns them with the video's key (default: the file name;
    with `cache`: its key there when the cache lists this file), the decoder (the cache's {codec: decoder})
    and the (model_id, controller_id) the cache's weights have (None without `cache`)."""
    backend, identity = None, None
    if cache is not None:
        from diffvqa_cache.cache.folder import FeatureCache

        fc = FeatureCache(cache)
        cfg = fc.config.extract.replace(view_size=fc.config.view_size)
        backend, identity = fc.decoders() or None, fc.config.identity
        here = Path(video).resolve()
        key = key or next((k for k, row in fc.labels.items() if Path(row["path"]).resolve() == here), None)
    values = {**(cfg.to_dict() if cfg is not None else RECONSTRUCT_DEFAULTS), **settings}
    if settings.get("frames") is not None and settings.get("fps") is None:
        values["fps"] = None  # --frames given: replaces a cache's --fps
    if "backend" in settings:
        backend = None  # --backend given: replaces the cache's decoders
    try:
        cfg = ExtractConfig.from_options(check=False, **values)
    except TypeError as exc:
        raise UserInputError(str(exc)) from None
    return cfg, key or safe_key(Path(video).name), backend or cfg.backend, identity


def run_reconstruct(video: Path, out: Path, cfg: ExtractConfig | None = None, cache: Path | None = None,
                    key: str | None = None, **settings) -> ReconstructResult:
    """Reconstruct N uniformly sampled frames of VIDEO through stage one's chain; write OUT (PNG) and OUT.json.
    Settings as in `reconstruct_settings`: `cfg`, or a `cache`'s, with `settings` (ExtractConfig fields) changed."""
    from PIL import Image

    from diffvqa_cache.extraction.backbone import load_backbone
    from diffvqa_cache.extraction.features import FeatureExtractor

    cfg, key, backend, identity = reconstruct_settings(video, cfg, cache, key, **settings)
    cfg.check_features_follow_input()
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserInputError(f"--out {out}: give a .png file name")
    # 1. frames and their resized views, exactly as stage one cuts them
    dev = resolve_device(cfg.device)
    cfg = cfg.resolved(dev.type == "cuda")
    bb = load_backbone(cfg.model, cfg.controller, cfg.revision)
    if identity is not None and (bb.model_id, bb.controller_id) != identity:
        raise UserInputError(f"the weights of --model {cfg.model} / --controller {cfg.controller} are not the ones "
                             f"the cache's features were made with {identity}")
    size = cfg.view_size or bb.native_size
    pixels, indices, _info, _ = load_video_frames(video, n_frames=cfg.frames, fps=cfg.fps, backend=backend)
    views = make_views(pixels, size, 1, cfg.seed, cfg.noise, key)["S"]
    # 2. stage one's reverse chain with stage one's start-noise seeds; decode z0_hat
    fx = FeatureExtractor(bb, steps=cfg.steps, sampler=cfg.sampler, grid=1, dtype=cfg.dtype, device=dev,
                          strength=cfg.strength, timestep_spacing=cfg.timestep_spacing, latent=cfg.latent)
    seeds = [noise_seed(cfg.seed, cfg.noise, key, t, "S", 0) for t in range(len(indices))]
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
        "video": str(video), "key": key, "model": cfg.model, "model_id": bb.model_id, "controller": cfg.controller,
        "controller_id": bb.controller_id, "steps": cfg.steps, "sampler": cfg.sampler,
        "timestep_spacing": cfg.timestep_spacing, "latent": cfg.latent, "seed": cfg.seed, "strength": cfg.strength,
        "noise": cfg.noise, "fps": cfg.fps, "cache": str(cache) if cache is not None else None,
        "view_size": size, "dtype": cfg.dtype, "error_gain": ERROR_GAIN, "frames": per_frame,
        "mean": {m: float(np.mean([f[m] for f in per_frame])) for m in per_frame[0] if m != "frame_index"},
        "columns": ["view", "reconstruction", "abs error"], "package_version": __version__,
    }
    json_path = out.with_suffix(".json")
    write_json_atomic(json_path, report)
    if bb.is_tiny:
        err.print("[yellow]--model tiny: a small random test model; its reconstructions are not images of note[/]")
    return ReconstructResult(out, json_path, report, latents)
