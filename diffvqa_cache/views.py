"""The two views of a frame: resized (whole frame, global semantics, branch S) and cropped (native
resolution, local distortions, branch D), plus the small pixel copy TCAB reads."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .seeds import view_seed


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, size, size, 3), bilinear with antialiasing (aspect not kept, as in SD)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def crop_origin(height: int, width: int, size: int, seed: int) -> tuple[int, int]:
    """Top-left of a size x size crop, drawn from a generator seeded by `seed` (see `seeds.view_seed`)."""
    rng = np.random.default_rng(seed)
    top = int(rng.integers(0, max(height - size, 0) + 1))
    left = int(rng.integers(0, max(width - size, 0) + 1))
    return top, left


def crop_frame(frame: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """A size x size crop at native resolution, zero-padded (centred) where the frame is smaller."""
    patch = frame[top:top + size, left:left + size]
    if patch.shape[0] == size and patch.shape[1] == size:
        return patch
    out = np.zeros((size, size, 3), dtype=frame.dtype)
    dy, dx = (size - patch.shape[0]) // 2, (size - patch.shape[1]) // 2
    out[dy:dy + patch.shape[0], dx:dx + patch.shape[1]] = patch
    return out


def make_views(frames: np.ndarray, size: int, crops: int, seed: int, noise: str = "shared", key: str = "") -> dict:
    """Both views of every frame: S (T, size, size, 3), D (T, K, size, size, 3), crop origins (T, K, 2).

    Crop k of the frame at position t is seeded like its start noise, by (seed, t, "D", k) (plus `key`
    when `noise` is "per-video"), so the same pixels give the same crops whatever the file is called."""
    T, H, W, _ = frames.shape
    origins = np.array([[crop_origin(H, W, size, view_seed("crop", seed, noise, key, t, "D", k)) for k in range(crops)]
                        for t in range(T)], dtype=np.int32).reshape(T, crops, 2)
    d = np.stack([np.stack([crop_frame(frames[t], *origins[t, k], size) for k in range(crops)]) for t in range(T)])
    return {"S": resize_frames(frames, size), "D": d, "crop_origin": origins}
