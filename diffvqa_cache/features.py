"""Per-view diffusion features: VAE encode, Controller-guided reverse chain, F_Latent and pooled F_MS.

F_MS are the outputs of the UNet's four up (decoder) blocks during the final denoising step, tapped
with forward hooks (the UNet's forward is never copied).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .backbone import Backbone

N_LEVELS = 4
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_scheduler(name: str, config: dict, timestep_spacing: str = "trailing"):
    """A deterministic sampler from the model's own training schedule.

    "trailing" spacing starts the chain at the last training timestep whatever the number of steps, so
    few-step chains really start from noise ("leading", SD's default, starts 1 step in at t=1).
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    cls = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler}[name]
    return cls.from_config(config, timestep_spacing=timestep_spacing)


class _UpBlockTap:
    """Forward hooks on the UNet's up blocks that keep their pooled outputs while `armed`."""

    def __init__(self, unet: torch.nn.Module, grid: int):
        self.grid, self.armed, self.maps = grid, False, [None] * N_LEVELS
        self.handles = [blk.register_forward_hook(self._hook(i)) for i, blk in enumerate(unet.up_blocks[:N_LEVELS])]

    def _hook(self, level: int):
        def hook(module, args, output):
            if self.armed:
                out = output[0] if isinstance(output, tuple) else output
                self.maps[level] = pool_to_grid(out.float(), self.grid)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def pool_to_grid(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pool (..., H, W) maps to grid x grid; maps already that small are kept."""
    if x.shape[-1] <= grid and x.shape[-2] <= grid:
        return x
    return F.adaptive_avg_pool2d(x, (min(grid, x.shape[-2]), min(grid, x.shape[-1])))


class FeatureExtractor:
    """Turns a batch of views into F_Latent (z0_hat) and the four pooled F_MS maps."""

    def __init__(self, backbone: Backbone, steps: int, scheduler: str = "ddim", grid: int = 8,
                 dtype: str = "fp32", device: str | torch.device = "cpu", timestep_spacing: str = "trailing",
                 strength: float = 1.0):
        self.bb, self.steps, self.grid = backbone, steps, grid
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        # Weights stay fp32; lower precision comes from autocast (only on CUDA, where it pays).
        self.bb.to(self.device)
        self.scheduler_name, self.timestep_spacing, self.strength = scheduler, timestep_spacing, strength
        self.scheduler_config = backbone.scheduler_config

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def encode(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) views -> scaled latents z0 (N, 4, H/8, W/8), deterministic (the posterior mean)."""
        x = views.to(self.device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        with self._autocast():
            z0 = self.bb.vae.encode(x).latent_dist.mean
        return z0.float() * self.bb.scaling_factor

    @torch.no_grad()
    def __call__(self, views: torch.Tensor, noise_seeds: list[int]) -> dict[str, torch.Tensor | list]:
        """views: uint8 (N, H, W, 3); one start-noise seed per view. Returns CPU float16 features."""
        # 1. encode the clean latent z0: the Controller's condition at every step
        z0 = self.encode(views)
        # 2. seeded start noise, drawn on the CPU so it is the same on every device and batch split
        noise = torch.stack([torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(s))
                             for s in noise_seeds]).to(self.device)
        scheduler = make_scheduler(self.scheduler_name, self.scheduler_config, self.timestep_spacing)
        if self.strength >= 1.0:  # the paper's chain: from pure noise z_T
            scheduler.set_timesteps(self.steps, device=self.device)
            timesteps = scheduler.timesteps
            z = noise * scheduler.init_noise_sigma
        else:  # img2img-style: from z0 noised to t = strength * T, over the last `steps` timesteps
            scheduler.set_timesteps(math.ceil(self.steps / self.strength), device=self.device)
            timesteps = scheduler.timesteps[-self.steps:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(len(scheduler.timesteps) - self.steps)
            z = scheduler.add_noise(z0, noise, timesteps[:1])
        text = self.bb.null_text.expand(len(views), -1, -1)
        tap = _UpBlockTap(self.bb.unet, self.grid)
        try:
            # 3. reverse chain z_T ... z_0_hat, Controller conditioned on z0; F_MS tapped at the final step
            for i, t in enumerate(timesteps):
                tap.armed = i == len(timesteps) - 1
                z_in = scheduler.scale_model_input(z, t)
                with self._autocast():
                    down, mid = self.bb.controller(z_in, t, encoder_hidden_states=text, controlnet_cond=z0,
                                                   return_dict=False)
                    eps = self.bb.unet(z_in, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                                       mid_block_additional_residual=mid, return_dict=False)[0]
                z = scheduler.step(eps.float(), t, z, return_dict=False)[0]
        finally:
            tap.remove()
        # 4. move compact fp16 features to the host
        return {"latent": z.half().cpu(), "ms": [m.half().cpu() for m in tap.maps]}
