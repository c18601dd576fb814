"""What a cache is keyed by: the extraction settings (`ExtractConfig`, the method's preset), the weights'
identity, the fingerprint of everything that changes the numbers, and the cache's own config (`CacheConfig`).

Stage one computes what these settings say; the cache records them, so they live with the cache. No torch here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar

from diffvqa_cache import __version__
from diffvqa_cache.config import Config, at_least, one_of, setting
from diffvqa_cache.errors import UserInputError

# Bump when a change to the extraction code changes the numbers it writes.
# 3: crop positions seeded like the start noise (by frame position, not by video id); F_Latent choice.
# 4: rotated (portrait phone) videos decoded upright by decord too, and by their legacy Matroska ROTATE tag;
#    the method's defaults as the authors state them (chain ending with its UNet call at t=0, F_Latent =
#    z0_hat, 20 crops per frame, bf16 on CUDA); the F_MS mean+std option;
#    crop positions seeded by the decoded pixels too (different videos, different places); frames smaller
#    than the view upscaled instead of zero-padded; crop placement a setting.
EXTRACTOR_VERSION = "4"

SAMPLERS = ("ddim", "dpm", "euler")
DTYPES = ("fp32", "bf16", "fp16")
EXTRACT_DTYPES = ("auto",) + DTYPES  # auto: bf16 where the views run on a CUDA GPU, else fp32
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
NOISE_MODES = ("shared", "per-video")
LATENTS = ("chain", "pred_x0")
MS_POOLS = ("mean", "mean+std")
CROP_PLACEMENTS = ("independent", "aligned")
SMALL_FRAMES = ("upscale", "pad")
SD21_BASE = "stabilityai/stable-diffusion-2-1-base"  # the method's default backbone (512 px)
# The method's extraction settings, as the authors state them (docs/architecture.md, "The method's
# defaults"): the one source of ExtractConfig's defaults and of `reproduce`'s preset. "linspace" spacing
# runs a 50-step chain from t=999 to t=0 (the authors' README: "we use z0_hat, along with the features from
# Denoising Network at time step t = 0"), F_Latent is that last call's z0_hat, and 20 crops per frame
# (their extraction runs `--crop --crop_number 20`).
METHOD = {"sampler": "ddim", "steps": 50, "timestep_spacing": "linspace", "latent": "pred_x0", "frames": 8,
          "crops": 20, "grid": 8, "pixel_size": 224, "dtype": "auto"}
# The one extraction preset of `reproduce`: SD 2.1-base with the method's settings (= extract's defaults).
PAPER_PRESET = {"model": SD21_BASE, **METHOD}
# Where `reconstruct`'s defaults differ from extract's: one frame row, in fp32 wherever it runs.
RECONSTRUCT_DEFAULTS = {"frames": 1, "dtype": "fp32"}
BACKENDS = ("auto", "decord", "pyav")




@dataclass
class ExtractConfig(Config):
    """What stage one computes. The fingerprint leaves out the fields declared `numbers=False` (they change
    speed or placement only) and `weights=True` (model, revision, controller: identified by the hash of
    their weights instead of their name)."""

    model: str = setting("tiny", "'tiny' (a small random test model), a local diffusers SD folder, or a hub id.",
                         weights=True)
    revision: str | None = setting(None, "Hub revision of --model (branch, tag or commit).", weights=True)
    controller: str | None = setting(None, "Adapted Controller folder (from `adapt`); none = zero-init (plain SD).",
                                      weights=True)
    sampler: str = setting(METHOD["sampler"], "Reverse-chain sampler: ddim, dpm or euler (deterministic, so "
                                              "features do not depend on batch composition).")
    steps: int = setting(METHOD["steps"], "Reverse-chain steps (1-4 are the fast variants).")
    timestep_spacing: str = setting(METHOD["timestep_spacing"], "linspace (from t=999 to a last UNet call at t=0 "
                                    "with ddim/euler, as the authors' features), trailing (every chain starts "
                                    "at t=999 and ends at 1000/steps-1: the spacing for 1-4 steps) or leading.")
    strength: float = setting(1.0, "1: the paper's chain from pure noise; <1: start from z0 noised to "
                                   "t=strength*T.")
    noise: str = setting("shared", "Start noise and crop positions: shared (noise seeded by frame position, view "
                                   "and crop, crops by the pixels too, so features depend on the pixels alone) or "
                                   "per-video (the video id too).")
    latent: str = setting(METHOD["latent"], "F_Latent: pred_x0 (z0_hat, the clean latent predicted at the last "
                                            "UNet call) or chain (the reverse chain's last output; the same for "
                                            "dpm and euler).")
    ms_pool: str = setting("mean", "F_MS pooling to the grid: mean, or mean+std (each cell's mean and standard "
                                   "deviation, 2x the F_MS bytes; fit uses the stds with --set ms_std=true).")
    frames: int | None = setting(METHOD["frames"], "Frames sampled uniformly per video (or use --fps).")
    fps: float | None = setting(None, "Sample frames at a fixed rate instead of --frames.")
    crops: int = setting(METHOD["crops"], "Cropped views per frame (the D branch; 20 as the authors' extraction).")
    crop_placement: str = setting("independent", "independent: crop k at a new place in every frame (as the "
                                                 "authors' frame-by-frame extraction); aligned: the same place in "
                                                 "every frame of a video. Either is drawn from the decoded pixels, "
                                                 "so a renamed copy gets the same crops and other videos other places.")
    small_frames: str = setting("upscale", "A frame whose short side is below the view size: upscale (short side "
                                           "to the view size, aspect kept) before cropping, or pad (zero bars).")
    view_size: int | None = setting(None, "View side in pixels (default: the model's native size, 512 for SD "
                                          "base, 128 for tiny).")
    grid: int = setting(METHOD["grid"], "F_MS maps average-pooled to GRID x GRID (maps smaller than that are kept).")
    pixel_size: int = setting(METHOD["pixel_size"], "Side of the uint8 view copy kept for TCAB (capped at the "
                                                    "view size).")
    seed: int = setting(0, "Seeds crop positions and start noise.")
    dtype: str = setting(METHOD["dtype"], "Compute precision of the diffusion model: auto (bf16 where the views "
                                          "run on a CUDA GPU, fp32 on the CPU; recorded resolved), fp32, bf16 or "
                                          "fp16 (autocast).")
    batch_size: int = setting(8, "Views per model pass.", numbers=False)
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda, cuda:1 ...", numbers=False)
    shard_size: int = setting(32, "Videos per HDF5 shard.", numbers=False)
    decode_workers: int = setting(2, "Threads decoding and cutting views ahead of the model.", numbers=False)
    backend: str = setting("auto", "Video decoder: auto (decord for H.264/HEVC/MPEG-4, else PyAV), decord or pyav.",
                           numbers=False)

    RENAMED: ClassVar[dict[str, str]] = {"scheduler": "sampler"}

    def __post_init__(self) -> None:
        if (self.frames is None) == (self.fps is None):
            raise UserInputError(f"give exactly one of frames={self.frames!r} and fps={self.fps!r}")
        if self.fps is not None and self.fps <= 0:
            raise UserInputError(f"fps must be > 0, got {self.fps}")
        one_of("sampler", self.sampler, SAMPLERS)
        one_of("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        one_of("noise", self.noise, NOISE_MODES)
        one_of("latent", self.latent, LATENTS)
        one_of("ms_pool", self.ms_pool, MS_POOLS)
        one_of("crop_placement", self.crop_placement, CROP_PLACEMENTS)
        one_of("small_frames", self.small_frames, SMALL_FRAMES)
        one_of("dtype", self.dtype, EXTRACT_DTYPES)
        one_of("backend", self.backend, BACKENDS)
        if not 0.0 < self.strength <= 1.0:
            raise UserInputError(f"strength must be in (0, 1], got {self.strength}")
        at_least(self, ("steps", "crops", "grid", "pixel_size", "batch_size", "shard_size", "decode_workers"), 1)
        if self.frames is not None and self.frames < 1:
            raise UserInputError(f"frames must be >= 1, got {self.frames}")
        if self.view_size is not None and (self.view_size < 8 or self.view_size % 8):
            raise UserInputError(f"view_size must be a multiple of 8 (the VAE's factor), got {self.view_size}")

    @classmethod
    def from_options(cls, check: bool = True, **values) -> "ExtractConfig":
        """From command-line values: --fps replaces the default --frames; with `check`, settings under which
        features cannot follow the input are refused before any work."""
        if values.get("fps") is not None:
            values["frames"] = None
        cfg = cls(**values)
        if check:
            cfg.check_features_follow_input()
        return cfg

    def resolved(self, gpu: bool) -> "ExtractConfig":
        """These settings with dtype "auto" made concrete for where the views run: bf16 on a CUDA GPU (the
        preset), fp32 on the CPU (where bf16 autocast is emulated on CPUs without native bf16 and was measured
        5x slower than fp32: BENCHMARKS.md). The cache records the resolved dtype, so caches never mix."""
        return self.replace(dtype=("bf16" if gpu else "fp32")) if self.dtype == "auto" else self

    def check_features_follow_input(self) -> None:
        """Refuse settings under which every video gets the same diffusion features."""
        require_input_dependence(self.controller, self.strength)

    def numeric_settings(self) -> dict:
        """The settings that change the numbers, but the weights' names (identified by their hash instead),
        under the names fingerprints were first written with (renaming a field must not orphan existing caches)."""
        legacy = {new: old for old, new in self.RENAMED.items()}
        hashed = self.fields_where(numbers=True, weights=False)
        return {legacy.get(k, k): v for k, v in sorted(self.to_dict().items()) if k in hashed}


def require_input_dependence(controller: str | None, strength: float) -> None:
    """Without a Controller the chain from pure noise ignores the video: shared seeded noise, an empty prompt
    and a zero-initialised Controller give every video the same features."""
    if controller is None and strength >= 1.0:
        raise UserInputError("no --controller with --strength 1: every video would get the same diffusion features "
                             "(the chain starts from noise and a zero-initialised Controller adds nothing); train one "
                             "with `diffvqa-cache adapt` and pass --controller, or use --strength < 1")


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights compute the features: content hashes, independent of where the files are."""

    model_id: str  # VAE + UNet + text encoder: "sd-<hash>" or "tiny-<config hash>"
    controller_id: str  # "ctrl-<hash>" of the Controller weights, or "zero-init"
    native_size: int  # the model's native view side in pixels


def fingerprint(cfg: ExtractConfig, model_id: str, controller_id: str, view_size: int,
                version: str | None = None) -> str:
    """16-hex-digit key of everything that changes the cached numbers, and nothing else."""
    payload = {
        "extractor_version": version or EXTRACTOR_VERSION,
        "model_id": model_id,
        "controller_id": controller_id,
        "settings": {**cfg.numeric_settings(), "view_size": view_size},
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class CacheConfig(Config):
    """A cache's identity and settings (its config.json): what was extracted, by which weights, of which
    dataset. Written first, before any shard; `FeatureCache.config` returns it."""

    fingerprint: str
    extract: ExtractConfig
    model_id: str
    controller_id: str
    view_size: int  # pixels, resolved from the model when extract's view_size is None
    pixel_size: int  # side of the cached uint8 view copies
    dataset: str
    mos_range: tuple[float, float]
    package_version: str = __version__
    tiny_model: bool = False
    timesteps: tuple[int, ...] = ()  # the UNet's timesteps along the chain; F_MS are tapped at the last one
    extractor_version: str = ""  # EXTRACTOR_VERSION of the code that wrote it ("": 3 or older, not recorded)

    @classmethod
    def create(cls, cfg: ExtractConfig, identity: ModelIdentity, dataset: str, mos_range: tuple[float, float],
               timesteps: tuple[int, ...] = (), gpu: bool = False) -> "CacheConfig":
        """The cache of `cfg` (dtype "auto" resolved for views run on a CUDA GPU when `gpu`, else on the CPU)."""
        cfg = cfg.resolved(gpu)
        view_size = cfg.view_size or identity.native_size
        return cls(fingerprint=fingerprint(cfg, identity.model_id, identity.controller_id, view_size), extract=cfg,
                   model_id=identity.model_id, controller_id=identity.controller_id, view_size=view_size,
                   pixel_size=min(cfg.pixel_size, view_size), dataset=dataset,
                   mos_range=tuple(float(x) for x in mos_range), tiny_model=cfg.model == "tiny",
                   timesteps=tuple(int(t) for t in timesteps), extractor_version=EXTRACTOR_VERSION)

    @property
    def extractor(self) -> str:
        """The extractor version that wrote the cache, for messages ("3 or older" where not recorded)."""
        return self.extractor_version or "3 or older"

    @property
    def is_current(self) -> bool:
        """Written by this extractor version: new extractions and predictions compute the same features."""
        return self.extractor_version == EXTRACTOR_VERSION

    @property
    def identity(self) -> tuple[str, str]:
        return self.model_id, self.controller_id

    def stale_note(self) -> str | None:
        """One line when this cache's features come from an older extractor version, else None."""
        if self.is_current:
            return None
        return (f"extracted by extractor version {self.extractor}; this version ({EXTRACTOR_VERSION}) computes other "
                "features (see README, 'Changed in'), which are never mixed with these")
