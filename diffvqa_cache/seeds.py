"""Seeds that are the same on every machine, Python run, device and batch split.

A view's start noise is seeded by (seed, frame position, view, crop): the same for every video when
`noise` is "shared" (features then depend on the pixels alone, so a renamed or copied file gets the same
features and score), keyed by the video id as well when it is "per-video".

Crop positions are seeded by the same parts plus a digest of the decoded pixels (`pixel_digest`): the
same pixels still give the same crops whatever the file is called, and different videos get different
places. Seeded by position alone, every video showed the same region at each frame position, so a flat
region (sky, a wall) hid blur and noise for a content in all of its versions at once (an external
real-content check measured cross-content SRCC 0.27 -> 0.07; issue 24).
"""

from __future__ import annotations

import hashlib

import numpy as np


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (strings, ints): identical on every machine and Python run."""
    blob = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def pixel_digest(*frames: np.ndarray) -> str:
    """Hex digest of decoded uint8 frames (their shapes and bytes): the content part of a crop seed."""
    h = hashlib.blake2b(digest_size=16)
    for frame in frames:
        h.update(repr(frame.shape).encode())
        h.update(np.ascontiguousarray(frame).tobytes())
    return h.hexdigest()


def view_seed(purpose: str, seed: int, noise: str, key: str, position: int | str, branch: str, crop: int,
              content: str = "") -> int:
    """Seed of one view's `purpose` ("noise" or "crop") at frame `position`, branch and crop; `content` (a
    `pixel_digest`) is part of crop seeds."""
    return stable_seed(purpose, seed, *((key,) if noise == "per-video" else ()), *((content,) if content else ()),
                       position, branch, crop)


def noise_seed(seed: int, noise: str, key: str, position: int, branch: str, crop: int) -> int:
    """Seed of one view's start noise."""
    return view_seed("noise", seed, noise, key, position, branch, crop)
