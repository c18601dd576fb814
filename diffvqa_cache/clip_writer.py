"""A small PyAV clip writer: the sample dataset's clips, the codec checks' and the decoder's test clips, and
the test suite's clips (shared, so that `datasets` need not import `extraction`)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_clip(
    path,
    frames: np.ndarray,
    fps: int = 24,
    codec: str = "libx264",
    crf: int | None = None,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    rotation_tag: bool = False,
    codec_options: dict | None = None,
    container_options: dict | None = None,
) -> Path:
    """Encode uint8 RGB frames (N, H, W, 3) to ``path`` with PyAV.

    ``rotation`` (counter-clockwise degrees) sets the display matrix, or with ``rotation_tag`` the legacy
    ``rotate`` tag (clockwise degrees, as old phones and ffmpeg wrote it; Matroska keeps it);
    ``codec_options`` go to the encoder (e.g. ``{"preset": "veryfast"}``), ``container_options`` to the muxer
    (e.g. ``{"movflags": "faststart"}``).
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    options = {}
    if crf is not None:
        options["crf"] = str(crf)
        if codec == "libvpx-vp9":
            options["b"] = "0"
    if codec in ("libvpx-vp9", "libvpx"):
        options.update({"deadline": "realtime", "cpu-used": "8"})
    options.update(codec_options or {})
    container = av.open(str(path), mode="w", options=container_options or {})
    try:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if "threads" in options:  # PyAV sets its own thread count, which overrides the codec option
            stream.codec_context.thread_count = int(options["threads"])
        if rotation and rotation_tag:
            stream.metadata["rotate"] = str(-rotation % 360)
        elif rotation:
            stream.set_display_rotation(rotation)
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path
