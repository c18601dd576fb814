"""Stage zero: adapt SD into a reconstructor by training the Controller (only it) to predict the noise.

Every random stream is a pure function of (seed, step): step k's frames, timesteps and noise never
depend on what ran before, so a run resumed from a checkpoint repeats the uninterrupted run exactly.
Also here: PSNR and SSIM for `reconstruct`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import Backbone
from .config import DTYPES, stable_seed
from .errors import UserInputError

CHECKPOINTS = "checkpoints"


@dataclass
class AdaptConfig:
    """How the Controller is trained. Fields in `NOT_CHECKED` may change when a run is resumed."""

    model: str = "tiny"  # "tiny", a local diffusers SD folder, or a hub id
    revision: str | None = None
    controller: str | None = None  # start from this Controller folder; None = zero-init copy of the UNet
    frames: int = 8  # frames sampled uniformly per video
    crops: int = 1  # cropped views per frame (besides the resized view)
    limit: int | None = None  # train on a seeded random subset of this many videos
    max_steps: int = 20000  # optimizer steps
    batch_size: int = 4  # latents per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4
    warmup: int = 500  # linear warm-up steps, then constant
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0  # 0 = no clipping
    seed: int = 0
    dtype: str = "fp32"  # autocast precision on CUDA (CPU always runs fp32)
    gradient_checkpointing: bool = False
    # Not checked on resume: length, bookkeeping and placement.
    save_every: int = 1000  # checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2
    device: str = "auto"

    NOT_CHECKED = ("max_steps", "save_every", "keep_checkpoints", "device")

    def __post_init__(self) -> None:
        for name in ("frames", "crops", "max_steps", "batch_size", "grad_accum", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "save_every", "max_grad_norm", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def checked(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_CHECKED}


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
        self.noise_sched = DDPMScheduler.from_config(backbone.scheduler_config)
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
        self.amp = torch.float32 if device.type != "cuda" else {"fp32": torch.float32, "bf16": torch.bfloat16,
                                                                  "fp16": torch.float16}[cfg.dtype]
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None

    def assert_only_controller_trains(self) -> None:
        assert all(p.requires_grad for p in self.bb.controller.parameters()), "the Controller must train"
        for name in ("unet", "vae"):
            assert not any(p.requires_grad for p in getattr(self.bb, name).parameters()), f"the {name} must stay frozen"

    def _autocast(self):
        if self.amp == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def loss(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """MSE between the UNet+Controller prediction at z_t and the true noise (or velocity)."""
        z0, t, noise = z0.to(self.device), t.to(self.device), noise.to(self.device)
        zt = self.noise_sched.add_noise(z0, noise, t)
        target = noise if self.prediction == "epsilon" else self.noise_sched.get_velocity(z0, noise, t)
        text = self.bb.null_text.expand(len(z0), -1, -1)
        with self._autocast():
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
        from safetensors.torch import save_file

        root = Path(out) / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{step:08d}"
        tmp = root / f".{final.name}.{os.getpid()}.incomplete"
        shutil.rmtree(tmp, ignore_errors=True)
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
        # 3. swap in, then drop the oldest beyond keep_checkpoints
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(out)[:-self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

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
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())


# ----------------------------------------------------------------------------- logs and plots

def plot_losses(rows: list[dict], path: Path) -> None:
    """Loss curve (raw and a running mean) as a PNG, with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, loss, lw=0.6, alpha=0.5, label="loss")
    w = max(1, len(loss) // 50)
    if w > 1:
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, lw=1.5, label=f"mean of {w}")
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
