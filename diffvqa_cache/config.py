"""Typed configuration of stage one (extraction). Saved beside every cache it produces."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

# Bump when a change to the extraction code changes the numbers it writes.
EXTRACTOR_VERSION = "2"

SCHEDULERS = ("ddim", "dpm", "euler")
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class ExtractConfig:
    """What stage one computes. Fields in `NOT_FINGERPRINTED` change speed or placement, never numbers."""

    model: str = "tiny"  # "tiny", a local diffusers folder, or a hub id
    revision: str | None = None  # hub revision (branch, tag or commit)
    controller: str | None = None  # folder written by ControlNetModel.save_pretrained; None = zero-init
    scheduler: str = "ddim"  # deterministic samplers only, so features do not depend on batch composition
    steps: int = 50  # reverse-chain length; 1-4 are the fast variants
    timestep_spacing: str = "trailing"  # "trailing": every chain starts at t=999; "leading"/"linspace" as diffusers
    strength: float = 1.0  # 1: the paper's chain from pure noise; <1: start from z0 noised to t=strength*T
    # "shared": start noise seeded by (seed, frame position, view, crop), the same for every video, so features
    # depend on the pixels alone (a renamed video keeps its features and its score); "per-video" adds the id.
    noise: str = "shared"
    frames: int | None = 8  # uniform sampling of N frames per video ...
    fps: float | None = None  # ... or a fixed rate (exactly one of frames / fps)
    crops: int = 1  # cropped views per frame (the D branch)
    view_size: int | None = None  # None = the backbone's native size (512 for SD base, 128 for tiny)
    grid: int = 8  # F_MS maps average-pooled to grid x grid (maps smaller than that kept as they are)
    pixel_size: int = 224  # side of the uint8 copy of each view kept for TCAB (capped at view_size)
    seed: int = 0  # seeds crop positions and start noise, per (video, frame, view, crop)
    dtype: str = "fp32"  # compute precision of the diffusion model: fp32, bf16, fp16
    # Not fingerprinted: placement and throughput only.
    batch_size: int = 8  # views per model pass
    device: str = "auto"
    shard_size: int = 32  # videos per HDF5 shard
    decode_workers: int = 2  # threads decoding and making views ahead of the model
    backend: str = "auto"  # video decoder: auto, decord, pyav

    NOT_FINGERPRINTED = ("model", "revision", "controller", "batch_size", "device", "shard_size",
                         "decode_workers", "backend")

    def __post_init__(self) -> None:
        if (self.frames is None) == (self.fps is None):
            raise ValueError(f"give exactly one of frames={self.frames!r} and fps={self.fps!r}")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.timestep_spacing not in ("trailing", "leading", "linspace"):
            raise ValueError(f"timestep_spacing must be trailing, leading or linspace, got {self.timestep_spacing!r}")
        if self.noise not in ("shared", "per-video"):
            raise ValueError(f"noise must be shared or per-video, got {self.noise!r}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("steps", "crops", "grid", "pixel_size", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.view_size is not None and self.view_size % 8:
            raise ValueError(f"view_size must be a multiple of 8 (the VAE's factor), got {self.view_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ExtractConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def numeric_settings(self) -> dict:
        """The settings that change the numbers (model identities are added by the fingerprint)."""
        return {k: v for k, v in sorted(self.to_dict().items()) if k not in self.NOT_FINGERPRINTED}


def known_fields(cls, data: dict, what: str) -> dict:
    """`data` if every key is a field of dataclass `cls`; else a one-line error naming the unknown ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        from .errors import UserInputError

        raise UserInputError(f"unknown {what} {unknown}; known: {sorted(known)}")
    return dict(data)


def fingerprint(cfg: ExtractConfig, model_id: str, controller_id: str, view_size: int) -> str:
    """16-hex-digit key of everything that changes the cached numbers, and nothing else."""
    payload = {
        "extractor_version": EXTRACTOR_VERSION,
        "model_id": model_id,
        "controller_id": controller_id,
        "settings": {**cfg.numeric_settings(), "view_size": view_size},
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (strings, ints): identical on every machine and Python run."""
    blob = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def noise_seed(cfg: "ExtractConfig", key: str, position: int, branch: str, crop: int) -> int:
    """Seed of one view's start noise: shared by all videos at this (frame position, view, crop) by default."""
    return stable_seed("noise", cfg.seed, *((key,) if cfg.noise == "per-video" else ()), position, branch, crop)
