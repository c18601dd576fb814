"""Seeds that are the same on every machine, Python run, device and batch split."""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (strings, ints): identical on every machine and Python run."""
    blob = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def noise_seed(seed: int, noise: str, key: str, position: int, branch: str, crop: int) -> int:
    """Seed of one view's start noise: shared by all videos at this (frame position, view, crop) when
    `noise` is "shared", also keyed by the video id when it is "per-video"."""
    return stable_seed("noise", seed, *((key,) if noise == "per-video" else ()), position, branch, crop)
