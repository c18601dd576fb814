"""Deterministic test clips (frame numbers encoded as brightness) and other small media writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MARKER_W = 16  # the left MARKER_W columns of frame i are uniform gray at marker_level(i)


def marker_level(i: int) -> int:
    """Brightness of the frame-number marker in frame ``i`` (distinct for i < 23)."""
    return 20 + 10 * i


def clip_frames(n: int = 16, w: int = 64, h: int = 48) -> np.ndarray:
    """Moving colour gradient with the frame number encoded as the marker's brightness."""
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (x * 4 + i * 8) % 256
        frames[i, ..., 1] = (y * 5 + i * 4) % 256
        frames[i, ..., 2] = 128
        frames[i, :, :MARKER_W] = marker_level(i) % 256
    return frames


def clip_markers(frames: np.ndarray) -> np.ndarray:
    """Recover the frame number of each decoded (N, H, W, 3) test frame from its marker."""
    level = frames[:, 8:-8, 2 : MARKER_W - 2].mean(axis=(1, 2, 3))
    return np.round((level - marker_level(0)) / (marker_level(1) - marker_level(0))).astype(int)


def write_audio_only(path: Path) -> Path:
    """A one-second AAC file with no video stream."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        samples = (np.sin(np.arange(16000) / 10.0) * 0.3).astype(np.float32)[None]
        for start in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="flt", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def noise_frames(n: int, w: int = 64, h: int = 48, seed: int = 0) -> np.ndarray:
    """Frames with a drifting random texture: every frame differs from its neighbours, so a frame taken
    from the wrong position (or decoded without its references) shows in the pixels."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w * 2, 3), dtype=np.uint8)
    return np.stack([np.roll(base, i, axis=1)[:, :w] // 2 + np.uint8(i * 7 % 128) for i in range(n)])


def write_vfr_clip(path: Path, frames: np.ndarray, pts_ms: list[int], codec: str = "libx264",
                   options: dict | None = None) -> Path:
    """Encode frames at the given presentation times (milliseconds): a variable-frame-rate clip."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=30, options=options or {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for arr, t in zip(frames, pts_ms):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
