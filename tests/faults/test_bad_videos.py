"""Fault injection: broken and unusual videos each extract correctly or fail alone, with a reason."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import av
import numpy as np
import pytest
from clip_helpers import clip_frames, write_audio_only

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.clip_writer import write_clip
from diffvqa_cache.datasets import load_dataset
from pipelines.extract import run_extract


def write_vfr(path, n=16, w=64, h=48):
    """H.264 with irregular frame durations (variable frame rate)."""
    frames = clip_frames(n, w, h)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1000)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        pts = 0
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 20 if i % 3 else 90
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory, clip_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "good.mp4").write_bytes(clip_factory("good", n=16).read_bytes())
    (root / "empty.mp4").write_bytes(b"")
    write_clip(root / "long.mp4", clip_frames(40, 64, 48), container_options={"movflags": "faststart"})
    full = (root / "long.mp4").read_bytes()
    (root / "long.mp4").unlink()
    (root / "truncated.mp4").write_bytes(full[: len(full) // 2])
    (root / "notes.mp4").write_text("this is not a video\n")
    write_audio_only(root / "speech.m4a")
    (root / "two_frames.mp4").write_bytes(clip_factory("two", n=2).read_bytes())
    write_clip(root / "huge.mp4", np.tile(clip_frames(4, 64, 48), (1, 24, 40, 1)), fps=24)  # 1152 x 2560
    (root / "rotated.mp4").write_bytes(clip_factory("rot", n=16, rotation=90).read_bytes())
    write_vfr(root / "vfr.mp4")
    names = ["good", "empty", "truncated", "notes", "speech.m4a", "two_frames", "huge", "rotated", "vfr"]
    rows = "".join(f"{n if '.' in n else n + '.mp4'},{3.0 + i / 10}\n" for i, n in enumerate(names))
    (root / "labels.csv").write_text("video,mos\n" + rows)
    return load_dataset("csv", root)


def test_each_bad_video_fails_alone_with_a_reason(bad_dataset, tiny_extract_config, tmp_path):
    cfg = dataclasses.replace(tiny_extract_config, frames=4, crops=1, shard_size=4)
    result = run_extract(bad_dataset, cfg, tmp_path, progress=False)
    failed = {f["video"]: f["reason"] for f in result.manifest["failed"]}
    assert set(failed) == {"empty", "truncated", "notes", "speech.m4a", "two_frames"}
    for key, reason in failed.items():
        assert key in reason and "\n" not in reason, reason
    assert "fewer than --frames 4" in failed["two_frames"]
    cache = FeatureCache(result.cache_dir)
    assert sorted(cache.keys) == ["good", "huge", "rotated", "vfr"]
    for key in cache.keys:
        video = cache.read(key)
        assert len(video.frame_index) == 4 and np.isfinite(video.branches["S"].ms[0].astype(np.float32)).all()
    # the rotated phone video was decoded upright: its resized view is portrait content squeezed to square
    assert cache.read("rotated").crop_origin.shape == (4, 1, 2)
    assert result.failed and len(result.failed) == 5


# --- portrait phone videos: stored turned, with a display matrix or the legacy rotate tag -------------------

try:
    import decord  # noqa: F401

    DECODERS = ["pyav", "decord"]
except Exception:
    DECODERS = ["pyav"]

# (container, legacy tag?, width, height of the upright picture): mp4 carries a display matrix, Matroska
# either one (PyAV writes it as a projection) or the old ROTATE tag; a square picture's shape says nothing.
STORES = [("mp4", False, 64, 96), ("mkv", False, 64, 96), ("mkv", True, 64, 96), ("mp4", False, 64, 64)]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("store", STORES, ids=lambda s: f"{s[0]}{'-tag' if s[1] else ''}-{s[2]}x{s[3]}")
def test_rotated_phone_video_decodes_upright(tmp_path, store, rotation, decoder):
    """Both decoders give the picture as it was filmed, whatever the installed decord does itself."""
    from clip_helpers import clip_markers

    from diffvqa_cache.extraction.video import probe, read_frames

    container, tag, w, h = store
    upright = clip_frames(16, w, h)
    stored = np.ascontiguousarray(np.rot90(upright, k=-rotation // 90, axes=(1, 2)))  # as the phone wrote it
    path = write_clip(tmp_path / f"phone.{container}", stored, rotation=rotation, rotation_tag=tag)
    assert probe(path).rotation == rotation
    indices = [2, 7, 13]
    frames, used = read_frames(path, indices, backend=decoder)
    assert used == decoder
    assert frames.shape == (3, h, w, 3)
    assert clip_markers(frames).tolist() == indices
    assert np.abs(frames.astype(int) - upright[indices].astype(int)).mean() < 4
