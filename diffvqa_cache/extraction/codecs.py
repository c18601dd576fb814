"""Which codecs decode here: tiny test clips written with PyAV, read back by PyAV and by decord."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import av
import numpy as np

from diffvqa_cache.clip_writer import write_clip
from diffvqa_cache.extraction.video import _one_line, read_frames

# codec -> (encoders to try in order, container); an absent encoder means the codec cannot be tested.
CLIP_CODECS = {
    "H.264": (("libx264", "libopenh264"), "mp4"),
    "HEVC": (("libx265", "libkvazaar"), "mp4"),
    "VP9": (("libvpx-vp9",), "webm"),
    "AV1": (("libsvtav1", "libaom-av1", "librav1e"), "mp4"),
}
# FFmpeg decoders of each codec: whether one is there even when no clip could be written.
CODEC_DECODERS = {"H.264": ("h264",), "HEVC": ("hevc",), "VP9": ("vp9", "libvpx-vp9"),
                  "AV1": ("libdav1d", "av1", "libaom-av1")}
MAX_ERROR = 20  # mean |decoded - source| in grey levels; every codec keeps the smooth test frames well within


def has_codec(name: str, mode: str) -> bool:
    """Whether this PyAV's FFmpeg has the encoder (mode "w") or decoder ("r") `name`."""
    try:
        av.codec.Codec(name, mode)
    except Exception:  # UnknownCodecError
        return False
    return True


def reference_frames() -> np.ndarray:
    """8 frames of 64x48 moving gradients, uint8 RGB."""
    y, x = np.mgrid[0:48, 0:64]
    frames = np.empty((8, 48, 64, 3), np.uint8)
    for i in range(8):
        frames[i, ..., 0], frames[i, ..., 1], frames[i, ..., 2] = (x * 3 + i * 8) % 256, y * 4, 128
    return frames


def write_test_clips(folder: Path) -> dict[str, Path | str]:
    """{codec: a clip of `reference_frames()` in `folder`, or why none could be written}."""
    clips: dict[str, Path | str] = {}
    for label, (encoders, container) in CLIP_CODECS.items():
        encoder = next((e for e in encoders if has_codec(e, "w")), None)
        if encoder is None:
            clips[label] = f"no {label} encoder in this PyAV ({', '.join(encoders)})"
            continue
        try:
            with _quiet_stderr():
                clips[label] = write_clip(folder / f"{label.replace('.', '')}.{container}", reference_frames(), codec=encoder)
        except Exception as exc:
            clips[label] = f"{encoder} could not write a clip ({_one_line(exc)})"
    return clips


def decode_problem(path: Path, backend: str) -> str:
    """'' when `backend` ("pyav" or "decord") itself decodes a test clip faithfully, else why not."""
    try:
        frames, used = read_frames(path, [0, 4, 7], backend=backend)
    except Exception as exc:
        return _one_line(exc)
    if used != backend:
        return f"fell back to {used}"
    if frames.shape != (3, 48, 64, 3):
        return f"wrong frame shape {frames.shape}"
    error = np.abs(frames.astype(np.float32) - reference_frames()[[0, 4, 7]]).mean()
    return "" if error < MAX_ERROR else f"wrong pixels (mean error {error:.0f})"


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the encoders' banners: x265 and SVT-AV1 print straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
