"""Seeds that are the same on every machine, Python run, device and batch split.

A view's start noise and crop position are seeded by (seed, frame position, view, crop): the same for
every video when `noise` is "shared" (features then depend on the pixels alone, so a renamed or copied
file gets the same features and score), keyed by the video id as well when it is "per-video".
"""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (strings, ints): identical on every machine and Python run."""
    blob = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def view_seed(purpose: str, seed: int, noise: str, key: str, position: int, branch: str, crop: int) -> int:
    """Seed of one view's `purpose` ("noise" or "crop") at frame `position`, branch and crop."""
    return stable_seed(purpose, seed, *((key,) if noise == "per-video" else ()), position, branch, crop)


def noise_seed(seed: int, noise: str, key: str, position: int, branch: str, crop: int) -> int:
    """Seed of one view's start noise."""
    return view_seed("noise", seed, noise, key, position, branch, crop)
