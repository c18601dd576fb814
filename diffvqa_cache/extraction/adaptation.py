"""Stage zero: adapt SD into a reconstructor by training the Controller (only it) to predict the noise.

Every random stream is a pure function of (seed, step): step k's frames, timesteps and noise never
depend on what ran before, so a run resumed from a checkpoint repeats the uninterrupted run exactly.
Also here: PSNR and SSIM for `reconstruct`.
"""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffvqa_cache.devices import autocast, training_dtype
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.extraction.backbone import Backbone
from diffvqa_cache.extraction.settings import AdaptConfig
from diffvqa_cache.files import INCOMPLETE, atomic_path
from diffvqa_cache.seeds import stable_seed

CHECKPOINTS = "checkpoints"


# ----------------------------------------------------------------------------- seeded streams

@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(stable_seed("adapt-order", seed, epoch)))


def batch_indices(seed: int, step: int, micro: int, batch: int, grad_accum: int, n: int) -> torch.Tensor:
    """Which latents micro-batch `micro` of step `step` reads: consecutive positions of seeded epoch permutations."""
    start = (step * grad_accum + micro) * batch
    pos = range(start, start + batch)
    return torch.stack([_epoch_order(seed, p // n, n)[p % n] for p in pos])


def timesteps_and_noise(seed: int, step: int, micro: int, batch: int, shape: tuple, n_train: int):
    """Training timesteps and noise of one micro-batch, drawn on the CPU from a (seed, step, micro) generator."""
    gen = torch.Generator().manual_seed(stable_seed("adapt-noise", seed, step, micro))
    t = torch.randint(0, n_train, (batch,), generator=gen)
    return t, torch.randn((batch, *shape), generator=gen)


def lr_at(step: int, cfg: AdaptConfig) -> float:
    """Linear warm-up over `warmup` steps, then constant (as DiffBIR)."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


# ----------------------------------------------------------------------------- the training step

class Adapter:
    """The frozen UNet + VAE, the trainable Controller, AdamW, and one optimizer step at a time."""

    def __init__(self, backbone: Backbone, latents: torch.Tensor, cfg: AdaptConfig, device: torch.device):
        from diffusers import DDPMScheduler

        self.bb, self.cfg, self.device = backbone, cfg, device
        self.latents = latents  # (N, 4, h, w) float32 on the CPU: the dataset's z0, computed once
        self.noise_sched = DDPMScheduler.from_config(backbone.noise_schedule)
        self.n_train = int(self.noise_sched.config.num_train_timesteps)
        self.prediction = self.noise_sched.config.prediction_type
        if self.prediction not in ("epsilon", "v_prediction"):
            raise UserInputError(f"prediction_type {self.prediction!r} is not supported (epsilon or v_prediction)")
        # 1. frozen backbone, trainable Controller
        backbone.to(device)
        backbone.controller.train().requires_grad_(True)
        if cfg.gradient_checkpointing:
            backbone.controller.enable_gradient_checkpointing()
            backbone.unet.enable_gradient_checkpointing()
        self.assert_only_controller_trains()
        # 2. optimizer and mixed precision (autocast and the fp16 loss scaler on CUDA only)
        self.params = [p for p in backbone.controller.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.dtype = training_dtype(device, cfg.dtype)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == "fp16" else None

    def assert_only_controller_trains(self) -> None:
        assert all(p.requires_grad for p in self.bb.controller.parameters()), "the Controller must train"
        for name in ("unet", "vae"):
            assert not any(p.requires_grad for p in getattr(self.bb, name).parameters()), f"the {name} must stay frozen"

    def loss(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """MSE between the UNet+Controller prediction at z_t and the true noise (or velocity)."""
        z0, t, noise = z0.to(self.device), t.to(self.device), noise.to(self.device)
        zt = self.noise_sched.add_noise(z0, noise, t)
        target = noise if self.prediction == "epsilon" else self.noise_sched.get_velocity(z0, noise, t)
        text = self.bb.null_text.expand(len(z0), -1, -1)
        with autocast(self.device, self.dtype):
            down, mid = self.bb.controller(zt, t, encoder_hidden_states=text, controlnet_cond=z0, return_dict=False)
            pred = self.bb.unet(zt, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                                mid_block_additional_residual=mid, return_dict=False)[0]
        return F.mse_loss(pred.float(), target.float())

    def step(self, step: int) -> tuple[float, float]:
        """One optimizer step (0-based `step`): returns (mean loss over its micro-batches, learning rate)."""
        cfg, n = self.cfg, len(self.latents)
        lr = lr_at(step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for m in range(cfg.grad_accum):
            idx = batch_indices(cfg.seed, step, m, cfg.batch_size, cfg.grad_accum, n)
            shape = tuple(self.latents.shape[1:])
            t, noise = timesteps_and_noise(cfg.seed, step, m, cfg.batch_size, shape, self.n_train)
            loss = self.loss(self.latents[idx], t, noise)
            scaled = loss / cfg.grad_accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += loss.item()
        if self.scaler:
            self.scaler.unscale_(self.opt)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        return total / cfg.grad_accum, lr

    # ------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self, out: Path, step: int, extra: dict) -> Path:
        """Write OUT/checkpoints/step-XXXXXXXX atomically: tensors as safetensors, the rest as JSON."""
        root = Path(out) / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{step:08d}"
        with atomic_path(final) as tmp:
            self._write_checkpoint(tmp, step, extra)
            if final.exists():  # a rerun of the same step replaces it
                shutil.rmtree(final)
        for old in list_checkpoints(out)[:-self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _write_checkpoint(self, tmp: Path, step: int, extra: dict) -> None:
        from safetensors.torch import save_file

        tmp.mkdir()
        # 1. Controller weights
        save_file({k: v.detach().cpu().contiguous() for k, v in self.bb.controller.state_dict().items()},
                  tmp / "controller.safetensors")
        # 2. optimizer: tensors to safetensors, scalars and param groups to JSON
        sd = self.opt.state_dict()
        tensors, scalars = {}, {}
        for i, st in sd["state"].items():
            for name, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{i}.{name}"] = v.detach().cpu().contiguous()
                else:
                    scalars[f"{i}.{name}"] = v
        save_file(tensors, tmp / "optimizer.safetensors")
        state = {"step": step, "config": self.cfg.to_dict(), "param_groups": sd["param_groups"],
                 "optimizer_scalars": scalars, "scaler": self.scaler.state_dict() if self.scaler else None, **extra}
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))

    def load_checkpoint(self, folder: Path) -> dict:
        """Restore the Controller, AdamW and loss scaler from a checkpoint; returns its state.json."""
        from safetensors.torch import load_file

        state = json.loads((folder / "state.json").read_text())
        self.bb.controller.load_state_dict(load_file(folder / "controller.safetensors"))
        tensors = load_file(folder / "optimizer.safetensors")
        per_param: dict[int, dict] = {}
        for key, v in list(tensors.items()) + list(state["optimizer_scalars"].items()):
            i, name = key.split(".", 1)
            per_param.setdefault(int(i), {})[name] = v
        self.opt.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return state


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints under OUT/checkpoints, oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if not p.name.endswith(INCOMPLETE) and (p / "state.json").is_file())


# ----------------------------------------------------------------------------- image metrics

def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two images of the same shape."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 gaussian window, sigma 1.5), averaged over channels of (H, W, C) images."""
    from scipy.ndimage import gaussian_filter

    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pad = int(3.5 * sigma + 0.5)  # the window radius; borders are left out, as in skimage
    vals = []
    for c in range(a.shape[-1]):
        x, y = a[..., c], b[..., c]

        def blur(z):
            return gaussian_filter(z, sigma, truncate=3.5, mode="reflect")

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        vals.append(s[pad:-pad, pad:-pad].mean() if min(s.shape) > 2 * pad else s.mean())
    return float(np.mean(vals))
