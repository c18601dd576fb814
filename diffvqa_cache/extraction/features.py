"""Per-view diffusion features: VAE encode, Controller-guided reverse chain, F_Latent and pooled F_MS.

F_MS are the outputs of the UNet's four up (decoder) blocks during the final denoising step, tapped
with forward hooks (the UNet's forward is never copied). That step runs at the chain's last timestep:
with "linspace" spacing (the default) ddim and euler chains run from t=999 to t=0, where the authors take
their features (999, 979, ..., 20, 0 for 50 steps; 999, 666, 333, 0 for 4; 999, 0 for 2), dpm's grid ends
at 1000/steps (t=20 for 50 steps); with "trailing" the last call is at t = 1000/steps - 1 (19 for 50 steps,
249 for 4, 999 for 1); "leading" ends at t=1 (SD's steps_offset). With strength < 1 the chain is the last
`steps` of ceil(steps/strength) slots. `chain_timesteps` gives the exact list, which extraction records in
the cache (`CacheConfig.timesteps`). F_Latent is the clean latent z0_hat predicted at the last call
("pred_x0", the default) or the chain's last output ("chain").
"""

from __future__ import annotations

import math

import torch

from diffvqa_cache.cache.branches import N_LEVELS, BranchFeatures
from diffvqa_cache.cache.pooling import pool_mean_std, pool_to_grid
from diffvqa_cache.cache.settings import LATENTS, METHOD, MS_POOLS
from diffvqa_cache.devices import autocast
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.extraction.backbone import Backbone


def make_sampler(name: str, config: dict, timestep_spacing: str = METHOD["timestep_spacing"]):
    """A deterministic sampler from the model's own training schedule.

    "trailing" spacing starts the chain at the last training timestep whatever the number of steps, so
    few-step chains really start from noise ("leading", SD's default, starts 1 step in at t=1).
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    cls = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler}[name]
    return cls.from_config(config, timestep_spacing=timestep_spacing)


def make_chain(name: str, schedule: dict, steps: int, spacing: str = METHOD["timestep_spacing"],
               strength: float = 1.0, device=None):
    """(sampler, timesteps) of a reverse chain: `steps` steps from pure noise (strength 1) or the last
    `steps` of ceil(steps/strength) slots (strength < 1, img2img style). A chain from pure noise whose first
    call is in the clean half of the schedule (1 step with linspace or leading spacing: t=0 or t=1) is refused."""
    sampler = make_sampler(name, schedule, spacing)
    if strength >= 1.0:
        sampler.set_timesteps(steps, device=device)
        first = int(sampler.timesteps[0])
        if first < int(schedule.get("num_train_timesteps", 1000)) // 2:
            raise UserInputError(f"--steps {steps} with --timestep-spacing {spacing}: the chain's first UNet call is at "
                                 f"t={first} on pure noise, which the model takes for a nearly clean latent; use "
                                 "--timestep-spacing trailing (a 1-step chain at t=999), more steps, or --strength < 1")
        return sampler, sampler.timesteps
    sampler.set_timesteps(math.ceil(steps / strength), device=device)
    if hasattr(sampler, "set_begin_index"):
        sampler.set_begin_index(len(sampler.timesteps) - steps)
    return sampler, sampler.timesteps[-steps:]


def chain_timesteps(name: str, schedule: dict, steps: int, spacing: str = METHOD["timestep_spacing"],
                    strength: float = 1.0) -> list[int]:
    """The UNet's timesteps along the chain; F_MS are tapped at the last one."""
    return [int(t) for t in make_chain(name, schedule, steps, spacing, strength)[1]]


class _UpBlockTap:
    """Forward hooks on the UNet's up blocks that keep their pooled outputs while `armed` (the cell means,
    or with `ms_pool` "mean+std" the means then the standard deviations along the channels)."""

    def __init__(self, unet: torch.nn.Module, grid: int, ms_pool: str = "mean"):
        self.grid, self.armed, self.maps = grid, False, [None] * N_LEVELS
        self.pool = pool_mean_std if ms_pool == "mean+std" else pool_to_grid
        self.handles = [blk.register_forward_hook(self._hook(i)) for i, blk in enumerate(unet.up_blocks[:N_LEVELS])]

    def _hook(self, level: int):
        def hook(module, args, output):
            if self.armed:
                out = output[0] if isinstance(output, tuple) else output
                self.maps[level] = self.pool(out.float(), self.grid)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class FeatureExtractor:
    """Turns a batch of views into F_Latent (z0_hat) and the four pooled F_MS maps."""

    def __init__(self, backbone: Backbone, steps: int, sampler: str = METHOD["sampler"], grid: int = METHOD["grid"],
                 dtype: str = "fp32", device: str | torch.device = "cpu",
                 timestep_spacing: str = METHOD["timestep_spacing"], strength: float = 1.0,
                 latent: str = METHOD["latent"], ms_pool: str = "mean"):
        if latent not in LATENTS:
            raise ValueError(f"latent must be one of {LATENTS}, got {latent!r}")
        if ms_pool not in MS_POOLS:
            raise ValueError(f"ms_pool must be one of {MS_POOLS}, got {ms_pool!r}")
        self.bb, self.steps, self.grid, self.latent, self.ms_pool = backbone, steps, grid, latent, ms_pool
        self.device = torch.device(device)
        # weights stay fp32; a lower precision is autocast ("auto": bf16 on CUDA, as ExtractConfig.resolved)
        self.dtype = ("bf16" if self.device.type == "cuda" else "fp32") if dtype == "auto" else dtype
        self.bb.to(self.device)
        self.sampler_name, self.timestep_spacing, self.strength = sampler, timestep_spacing, strength

    @torch.no_grad()
    def encode(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) views -> scaled latents z0 (N, 4, H/8, W/8), deterministic (the posterior mean)."""
        x = views.to(self.device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        with autocast(self.device, self.dtype):
            z0 = self.bb.vae.encode(x).latent_dist.mean
        return z0.float() * self.bb.scaling_factor

    @torch.no_grad()
    def __call__(self, views: torch.Tensor, noise_seeds: list[int]) -> BranchFeatures:
        """views: uint8 (N, H, W, 3); one start-noise seed per view. Returns CPU float16 F_Latent (N, 4, h, w)
        and F_MS (N, C_l, g, g) per level (N, 2 C_l, g, g with ms_pool "mean+std"; no pixels)."""
        # 1. encode the clean latent z0: the Controller's condition at every step
        z0 = self.encode(views)
        # 2. seeded start noise, drawn on the CPU so it is the same on every device and batch split
        noise = torch.stack([torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(s))
                             for s in noise_seeds]).to(self.device)
        sampler, timesteps = make_chain(self.sampler_name, self.bb.noise_schedule, self.steps, self.timestep_spacing,
                                        self.strength, self.device)
        if self.strength >= 1.0:  # the paper's chain: from pure noise z_T
            z = noise * sampler.init_noise_sigma
        else:  # img2img-style: from z0 noised to t = strength * T
            z = sampler.add_noise(z0, noise, timesteps[:1])
        text = self.bb.null_text.expand(len(views), -1, -1)
        tap = _UpBlockTap(self.bb.unet, self.grid, self.ms_pool)
        try:
            # 3. reverse chain z_T ... z_0_hat, Controller conditioned on z0; F_MS tapped at the final step
            for i, t in enumerate(timesteps):
                last = i == len(timesteps) - 1
                tap.armed = last
                z_in = sampler.scale_model_input(z, t)
                with autocast(self.device, self.dtype):
                    down, mid = self.bb.controller(z_in, t, encoder_hidden_states=text, controlnet_cond=z0,
                                                   return_dict=False)
                    eps = self.bb.unet(z_in, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                                       mid_block_additional_residual=mid, return_dict=False)[0]
                x0 = _predicted_clean(sampler, eps.float(), t, z) if last and self.latent == "pred_x0" else None
                out = sampler.step(eps.float(), t, z)
                z = out.prev_sample
                if x0 is None and last and self.latent == "pred_x0":
                    x0 = out.pred_original_sample
        finally:
            tap.remove()
        # 4. move compact fp16 features to the host
        latent = x0 if self.latent == "pred_x0" else z
        return BranchFeatures(latent=latent.half().cpu(), ms=tuple(m.half().cpu() for m in tap.maps))


def _predicted_clean(sampler, eps: torch.Tensor, t, z: torch.Tensor) -> torch.Tensor | None:
    """The clean latent the model predicts at `t`, for samplers whose step does not return it (DPM-Solver
    converts its model output to it); None for the others (their step's pred_original_sample is used)."""
    if hasattr(sampler, "convert_model_output") and getattr(sampler.config, "algorithm_type", "") in (
            "dpmsolver++", "sde-dpmsolver++"):
        if sampler.step_index is None:  # the chain's first step (a 1-step chain): what step() does first
            sampler._init_step_index(t)
        return sampler.convert_model_output(eps, sample=z)
    return None
