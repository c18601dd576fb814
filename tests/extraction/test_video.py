"""Decoding, probing and frame sampling (diffvqa_cache.extraction.video)."""

from __future__ import annotations

import numpy as np
import pytest
from clip_helpers import write_audio_only

from diffvqa_cache.clip_writer import write_clip
from diffvqa_cache.errors import DecodeError, UserInputError
from diffvqa_cache.extraction.video import load_video_frames, probe, read_frames, sample_indices

try:
    import decord  # noqa: F401

    HAS_DECORD = True
except Exception:
    HAS_DECORD = False

needs_decord = pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")


@pytest.fixture
def markers(clip_tools):
    return clip_tools.markers


# --- sample_indices ---------------------------------------------------------------------------


def test_uniform_indices_are_segment_centres():
    assert sample_indices(16, 8).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sample_indices(240, 8).tolist() == [15, 45, 75, 105, 135, 165, 195, 225]
    assert sample_indices(8, 8).tolist() == list(range(8))


@pytest.mark.parametrize("n_total,n", [(8, 8), (9, 8), (100, 7), (1000, 16), (31, 30)])
def test_uniform_indices_properties(n_total, n):
    idx = sample_indices(n_total, n)
    assert len(idx) == n and idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < n_total


def test_fixed_rate_indices():
    assert sample_indices(30, None, fps=10, video_fps=30).tolist() == list(range(0, 30, 3))
    idx = sample_indices(100, None, fps=12, video_fps=29.97)
    assert idx[0] == 0 and idx[-1] < 100 and np.all(np.diff(idx) >= 2)
    assert len(idx) == int(np.ceil(100 / (29.97 / 12)))
    assert sample_indices(5, None, fps=1, video_fps=30).tolist() == [0]


def test_indices_need_exactly_one_mode():
    with pytest.raises(UserInputError):
        sample_indices(30, None, None)
    with pytest.raises(UserInputError):
        sample_indices(30, 8, fps=2)


def test_too_few_frames_names_file():
    with pytest.raises(DecodeError, match=r"clip\.mp4 has 2 frames, fewer than --frames 8"):
        sample_indices(2, 8, path="clip.mp4")


# --- probe and decode -------------------------------------------------------------------------


def test_probe_h264(clip_factory):
    path = clip_factory("h264")
    info = probe(path)
    assert (info.n_frames, info.fps, info.width, info.height) == (16, 24.0, 64, 48)
    assert info.codec == "h264" and info.rotation == 0 and info.path == path


@needs_decord
def test_decord_and_pyav_agree_on_h264(clip_factory, markers, clip_tools):
    path = clip_factory("h264")
    idx = [0, 5, 9, 15]
    a, used_a = read_frames(path, idx, backend="decord")
    b, used_b = read_frames(path, idx, backend="pyav")
    assert (used_a, used_b) == ("decord", "pyav")
    assert a.shape == b.shape == (4, 48, 64, 3) and a.dtype == b.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0
    assert markers(a).tolist() == markers(b).tolist() == idx
    # close to the source frames
    src = clip_tools.frames()[idx]
    assert np.abs(b.astype(int) - src.astype(int)).mean() < 6


@pytest.mark.parametrize("backend", ["auto", "pyav"] + (["decord"] if HAS_DECORD else []))
def test_frame_order_unsorted_and_repeated(clip_factory, backend, markers):
    idx = [12, 0, 7, 7, 3]
    frames, _ = read_frames(clip_factory("h264"), idx, backend=backend)
    assert markers(frames).tolist() == idx


@needs_decord
def test_auto_prefers_decord_for_h264(clip_factory):
    _, used = read_frames(clip_factory("h264"), [1], backend="auto")
    assert used == "decord"


@pytest.mark.parametrize("container", ["webm", "mkv"])
def test_vp9_decodes_via_auto(clip_factory, container, markers):
    path = clip_factory("vp9", codec="libvpx-vp9", container=container)
    info = probe(path)
    assert info.codec == "vp9" and info.n_frames == 16
    frames, indices, info2, used = load_video_frames(path, n_frames=8)
    assert used == "pyav" and frames.shape == (8, 48, 64, 3)
    assert markers(frames).tolist() == indices.tolist() == list(range(1, 16, 2))


def test_hevc_and_mpeg4_decode(clip_factory, markers):
    for codec in ("libx265", "mpeg4"):
        frames, indices, info, _ = load_video_frames(clip_factory(codec, codec=codec), n_frames=4)
        assert markers(frames).tolist() == indices.tolist()


@pytest.mark.parametrize("backend", ["auto", "pyav"] + (["decord"] if HAS_DECORD else []))
def test_rotation_applied(clip_factory, backend):
    plain, _ = read_frames(clip_factory("h264"), [2, 9], backend="pyav")
    path = clip_factory("rot90", rotation=90)
    assert probe(path).rotation == 90
    frames, _ = read_frames(path, [2, 9], backend=backend)
    assert frames.shape == (2, 64, 48, 3)
    expected = np.rot90(plain, k=1, axes=(1, 2))
    assert np.abs(frames.astype(int) - expected.astype(int)).mean() < 1.0


def test_load_video_frames_fps_mode(clip_factory, markers):
    frames, indices, info, _ = load_video_frames(clip_factory("h264"), n_frames=None, fps=6)
    assert indices.tolist() == [0, 4, 8, 12]
    assert markers(frames).tolist() == [0, 4, 8, 12]


# --- failures: one DecodeError naming the file ------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty.mp4"):
        probe(path)
    with pytest.raises(DecodeError, match="empty.mp4"):
        load_video_frames(path)


def test_text_file_renamed_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(DecodeError, match="notes.mp4") as err:
        read_frames(path, [0])
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="nope.mp4"):
        probe(tmp_path / "nope.mp4")


def test_audio_only_file(tmp_path):
    path = write_audio_only(tmp_path / "speech.m4a")
    with pytest.raises(DecodeError, match=r"speech\.m4a has no video stream"):
        load_video_frames(path)


def test_two_frame_video_with_frames_8(clip_factory, markers):
    path = clip_factory("short", n=2)
    with pytest.raises(DecodeError, match=r"short\.mp4 has 2 frames, fewer than --frames 8; lower --frames"):
        load_video_frames(path, n_frames=8)
    frames, indices, _, _ = load_video_frames(path, n_frames=2)
    assert markers(frames).tolist() == indices.tolist() == [0, 1]


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_truncated_file(tmp_path, backend, clip_tools):
    full = tmp_path / "full.mp4"
    write_clip(full, clip_tools.frames(40, 64, 48), container_options={"movflags": "faststart"})
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert probe(cut).n_frames == 40  # the header still claims every frame
    with pytest.raises(DecodeError, match=r"cut\.mp4.*truncated"):
        read_frames(cut, [0, 39], backend=backend)


def test_unknown_backend(clip_factory):
    with pytest.raises(UserInputError):
        read_frames(clip_factory("h264"), [0], backend="ffmpeg")


# --- PyAV seeks to the keyframe before each wanted frame (same frames as a sequential decode) ----------

from clip_helpers import noise_frames, write_vfr_clip  # noqa: E402

from diffvqa_cache.extraction import video as video_mod  # noqa: E402

SEEK_CLIPS = {  # name: write_clip keywords (120 frames): short/long GOPs, B-frames, open GOP, odd containers
    "h264_gop8_bframes.mp4": dict(codec="libx264", codec_options={"g": "8", "bf": "3", "preset": "veryfast"}),
    "h264_gop250.mp4": dict(codec="libx264", codec_options={"g": "250"}),
    "h264_open_gop.mp4": dict(codec="libx264", codec_options={
        "x264-params": "open-gop=1:keyint=10:min-keyint=10:scenecut=0"}),
    "h264_no_bframes.mkv": dict(codec="libx264", codec_options={"g": "12", "bf": "0"}),
    "h264_gop10.mov": dict(codec="libx264", codec_options={"g": "10"}),
    "h264_gop10.ts": dict(codec="libx264", codec_options={"g": "10"}),
    "h264_gop10.avi": dict(codec="libx264", codec_options={"g": "10"}),
    "mpeg4_bframes.avi": dict(codec="mpeg4", codec_options={"g": "10", "bf": "2"}),
    "vp9_gop10.webm": dict(codec="libvpx-vp9", codec_options={"g": "10"}),
    "vp9_gop10.mkv": dict(codec="libvpx-vp9", codec_options={"g": "10"}),
}


class _CountingContainer:
    """Wraps a PyAV container and counts the frames its decoder returns (sequential or after seeks)."""

    def __init__(self, container, counter):
        self._c, self._n = container, counter

    def __getattr__(self, name):
        return getattr(self._c, name)

    def decode(self, *args):
        for frame in self._c.decode(*args):
            self._n[0] += 1
            yield frame

    def demux(self, *args):
        for packet in self._c.demux(*args):
            yield _CountingPacket(packet, self._n)


class _CountingPacket:
    def __init__(self, packet, counter):
        self._p, self._n = packet, counter

    def __getattr__(self, name):
        return getattr(self._p, name)

    def decode(self):
        frames = self._p.decode()
        self._n[0] += len(frames)
        return frames


@pytest.fixture
def count_decoded(monkeypatch):
    counter = [0]
    real_open = video_mod._open
    monkeypatch.setattr(video_mod, "_open", lambda path: _CountingContainer(real_open(path), counter))
    return counter


def _seek_used(path, indices) -> bool:
    container = video_mod._open(path)
    try:
        return video_mod._read_pyav_seeking(container, video_mod._video_stream(container, path), indices) is not None
    finally:
        container.close()


@pytest.mark.parametrize("name", sorted(SEEK_CLIPS))
def test_pyav_seeking_gives_the_sequential_frames(tmp_path, name):
    path = write_clip(tmp_path / name, noise_frames(120), **SEEK_CLIPS[name])
    info = probe(path)
    for idx in (sample_indices(info.n_frames, 8), np.array([119, 3, 64, 64, 0, 57, 58, 9])):
        seek = video_mod._read_pyav(path, idx, info.n_frames, seek=True)
        seq = video_mod._read_pyav(path, idx, info.n_frames, seek=False)
        assert seek.shape == (len(idx), 48, 64, 3) and np.array_equal(seek, seq), name
    assert _seek_used(path, idx), f"{name}: fell back to the sequential decode"


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_pyav_seeking_vfr(tmp_path, container):
    pts = np.cumsum(np.random.default_rng(1).integers(10, 100, 120)).tolist()  # 10..100 ms apart
    path = write_vfr_clip(tmp_path / f"vfr.{container}", noise_frames(120), pts, options={"g": "10"})
    idx = np.array([1, 30, 31, 77, 119])
    seek = video_mod._read_pyav(path, idx, 120, seek=True)
    assert np.array_equal(seek, video_mod._read_pyav(path, idx, 120, seek=False))
    assert _seek_used(path, idx)


def test_pyav_decodes_only_the_wanted_gops(tmp_path, count_decoded):
    """8 frames of a 240-frame clip with a keyframe every 10: at most a GOP per frame is decoded, not 211."""
    path = write_clip(tmp_path / "gop10.mp4", noise_frames(240), codec_options={"g": "10", "bf": "2"})
    idx = sample_indices(240, 8)  # 15, 45, ..., 225
    frames, used = read_frames(path, idx, backend="pyav")
    assert used == "pyav" and frames.shape[0] == 8
    assert count_decoded[0] <= 8 * 10 + 1  # probe decodes one frame
    count_decoded[0] = 0
    read_frames(path, [230], backend="pyav")
    assert count_decoded[0] <= 10 + 1


def test_pyav_falls_back_when_a_seek_misses(tmp_path, monkeypatch):
    """A container whose seeks land on a frame that is no keyframe (an inexact index) is caught: the
    sequential frames come back, not frames decoded without their references."""
    path = write_clip(tmp_path / "gop10.mp4", noise_frames(60), codec_options={"g": "10"})
    idx = np.array([5, 25, 47])
    expected = video_mod._read_pyav(path, idx, 60, seek=False)
    real_open = video_mod._open

    class Inexact(_CountingContainer):
        def seek(self, ts, **kw):  # three frames (512 ticks each) past the asked-for time, any frame
            return self._c.seek(ts + 3 * 512, backward=True, any_frame=True, stream=kw.get("stream"))

    monkeypatch.setattr(video_mod, "_open", lambda p: Inexact(real_open(p), [0]))
    assert not _seek_used(path, idx)
    assert np.array_equal(video_mod._read_pyav(path, idx, 60, seek=True), expected)


def test_pyav_falls_back_when_the_decoder_skips_an_indexed_frame(tmp_path, monkeypatch):
    """A packet the decoder shows no frame for (a hidden frame stored on its own) would shift every index
    after it: the decoded pts are checked against the index, and the sequential frames come back."""
    path = write_clip(tmp_path / "gop10.mp4", noise_frames(60), codec_options={"g": "10"})
    idx = np.array([5, 25, 47])
    expected = video_mod._read_pyav(path, idx, 60, seek=False)
    real = video_mod._packet_index

    def with_hidden_frame(container, stream):  # an extra timestamp between frames 20 and 21
        order, key_pts, key_seek = real(container, stream)
        extra = (order[20] + order[21]) // 2
        at = 21
        return (np.insert(order, at, extra), np.insert(key_pts, at, key_pts[20]),
                np.insert(key_seek, at, key_seek[20]))

    monkeypatch.setattr(video_mod, "_packet_index", with_hidden_frame)
    assert not _seek_used(path, idx)
    assert np.array_equal(video_mod._read_pyav(path, idx, 60, seek=True), expected)
