"""The two views of a frame: resized (whole frame, global semantics, branch S) and cropped (native
resolution, local distortions, branch D), plus the small pixel copy TCAB reads."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from diffvqa_cache.seeds import pixel_digest, view_seed


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, height, width, 3), bilinear with antialiasing."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, size, size, 3), bilinear with antialiasing (aspect not kept, as in SD)."""
    return _resize(frames, size, size)


def upscale_to_view(frames: np.ndarray, size: int) -> np.ndarray:
    """Frames whose short side is below `size`, upscaled so that it is `size` (aspect kept, as the fragment
    samplers of FAST-VQA/DOVER do); others unchanged. Crops then never hold black bars, whose extent would
    track resolution, not quality."""
    H, W = frames.shape[1:3]
    if min(H, W) >= size:
        return frames
    scale = size / min(H, W)
    return _resize(frames, max(size, round(H * scale)), max(size, round(W * scale)))


def crop_origin(height: int, width: int, size: int, seed: int) -> tuple[int, int]:
    """Top-left of a size x size crop, drawn from a generator seeded by `seed` (see `seeds.view_seed`)."""
    rng = np.random.default_rng(seed)
    top = int(rng.integers(0, max(height - size, 0) + 1))
    left = int(rng.integers(0, max(width - size, 0) + 1))
    return top, left


def crop_frame(frame: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """A size x size crop, zero-padded (centred) where the frame is smaller (`small_frames="pad"` only)."""
    patch = frame[top:top + size, left:left + size]
    if patch.shape[0] == size and patch.shape[1] == size:
        return patch
    out = np.zeros((size, size, 3), dtype=frame.dtype)
    dy, dx = (size - patch.shape[0]) // 2, (size - patch.shape[1]) // 2
    out[dy:dy + patch.shape[0], dx:dx + patch.shape[1]] = patch
    return out


def crop_seeds(frames: np.ndarray, crops: int, seed: int, noise: str = "shared", key: str = "",
               placement: str = "independent") -> list[list[int]]:
    """Seed of crop k at frame position t, (T, K) nested lists.

    independent: seeded by (seed, t, "D", k, digest of frame t's decoded pixels), a new place in every
    frame; aligned: by (seed, "D", k, digest of all sampled frames), one place per video. Same pixels,
    same crops whatever the file is called; different videos, different places. `noise="per-video"`
    adds the video id."""
    T = len(frames)
    if placement == "aligned":
        content = pixel_digest(*frames)
        row = [view_seed("crop", seed, noise, key, "aligned", "D", k, content) for k in range(crops)]
        return [row for _ in range(T)]
    return [[view_seed("crop", seed, noise, key, t, "D", k, pixel_digest(frames[t])) for k in range(crops)]
            for t in range(T)]


def make_views(frames: np.ndarray, size: int, crops: int, seed: int, noise: str = "shared", key: str = "",
               placement: str = "independent", small_frames: str = "upscale") -> dict:
    """Both views of every frame: S (T, size, size, 3), D (T, K, size, size, 3), crop origins (T, K, 2).

    Crop origins are seeded by `crop_seeds` (from the decoded pixels) and are in the frame as cropped:
    with `small_frames="upscale"` a frame whose short side is below `size` is first upscaled
    (`upscale_to_view`); with "pad" it is cropped as decoded and zero-padded."""
    T = frames.shape[0]
    seeds = crop_seeds(frames, crops, seed, noise, key, placement)
    native = upscale_to_view(frames, size) if small_frames == "upscale" else frames
    H, W = native.shape[1:3]
    origins = np.array([[crop_origin(H, W, size, s) for s in row] for row in seeds], dtype=np.int32).reshape(T, crops, 2)
    d = np.stack([np.stack([crop_frame(native[t], *origins[t, k], size) for k in range(crops)]) for t in range(T)])
    return {"S": resize_frames(frames, size), "D": d, "crop_origin": origins}
