"""Video probing, frame-index sampling and decoding (decord or PyAV); the clip writer is `clip_writer.py`."""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from diffvqa_cache.clip_writer import write_clip
from diffvqa_cache.errors import DecodeError, UserInputError

# Codecs decord 0.6.0 handles well; it cannot read AV1 and needs num_threads=1 for VP9.
DECORD_CODECS = ("h264", "hevc", "mpeg4")
REENCODE_HINT = "re-encode it, e.g. ffmpeg -i in -c:v libx264 out.mp4"


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video's first video stream."""

    path: Path
    n_frames: int
    fps: float
    width: int
    height: int
    codec: str
    rotation: int  # counter-clockwise degrees to turn frames upright (0, 90, 180 or 270)
    container: str = ""  # the demuxer's format name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    rotation_tag: bool = False  # rotation from the legacy `rotate` tag rather than the display matrix


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _open(path: Path):
    """Open a container, turning every failure into a one-line DecodeError."""
    if not path.exists():
        raise DecodeError(f"{path}: file does not exist; check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise DecodeError(f"{path} is empty (0 bytes); re-download or remove it")
    try:
        return av.open(str(path))
    except Exception as exc:  # av.error.* and OSError
        raise DecodeError(f"{path} is not a readable video ({_one_line(exc)}); {REENCODE_HINT}") from exc


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise DecodeError(f"{path} has no video stream (audio-only or not a video); use a video file")
    return container.streams.video[0]


def _rotation(degrees: float | int | None) -> int:
    """Normalise a display-matrix angle to 0/90/180/270 counter-clockwise."""
    if not degrees:
        return 0
    return int(round(float(degrees) / 90.0)) * 90 % 360


def probe(path) -> VideoInfo:
    """Read frame count, rate, size, codec and rotation of a video with PyAV (decodes one frame)."""
    path = Path(path)
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        codec = getattr(stream.codec_context.codec, "canonical_name", None) or stream.codec_context.name
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        n_frames = int(stream.frames or 0)
        try:
            first = next(container.decode(stream), None)
        except Exception as exc:
            raise DecodeError(f"{path}: cannot decode its {codec} stream ({_one_line(exc)}); {REENCODE_HINT}") from exc
        if first is None:
            raise DecodeError(f"{path} has a video stream with no decodable frames; {REENCODE_HINT}")
        rotation = _rotation(getattr(first, "rotation", 0))
        tag = _rotate_tag(stream.metadata)
        rotation_tag = rotation == 0 and tag is not None
        if rotation_tag:  # legacy tag (e.g. Matroska's ROTATE): clockwise degrees
            rotation = _rotation(-tag)
        width, height = first.width, first.height
        if n_frames <= 0:  # e.g. WebM/MKV: count packets instead of trusting the duration
            container.seek(0)
            n_frames = sum(1 for p in container.demux(stream) if p.size)
    finally:
        container.close()
    if fps <= 0:
        fps = 30.0
    return VideoInfo(path, n_frames, fps, width, height, codec, rotation, container.format.name,
                     rotation_tag and rotation != 0)


def _rotate_tag(metadata) -> float | None:
    """The legacy `rotate` tag (any case: Matroska stores it as ROTATE) in clockwise degrees, if any."""
    for name, value in metadata.items():
        if name.lower() == "rotate":
            try:
                return float(value)
            except ValueError:
                return None
    return None


class TooFewFrames(DecodeError):
    """A video with fewer frames than the sampling takes (`n_frames`); the message is extract's, where the
    sampling is an option (predict, whose run fixes it, says its own)."""

    def __init__(self, name: str, n_total: int, n_frames: int):
        self.n_total, self.n_frames = n_total, n_frames
        super().__init__(f"{name} has {n_total} frames, fewer than --frames {n_frames}; lower --frames or use --fps")


def sample_indices(
    n_total: int,
    n_frames: int | None = 8,
    fps: float | None = None,
    video_fps: float = 30.0,
    *,
    path=None,
) -> np.ndarray:
    """Frame indices to decode: ``n_frames`` segment centres, or one every ``video_fps / fps`` frames.

    Exactly one of ``n_frames``/``fps`` is used; ``path`` only names the video in errors.
    """
    name = str(path) if path is not None else "video"
    if (n_frames is None) == (fps is None):
        raise UserInputError("give exactly one of --frames or --fps")
    if n_total <= 0:
        raise DecodeError(f"{name} has no frames; {REENCODE_HINT}")
    if fps is not None:
        if fps <= 0 or video_fps <= 0:
            raise UserInputError(f"--fps must be positive (got {fps}, video {video_fps})")
        step = video_fps / fps
        count = max(1, math.ceil(n_total / step - 1e-9))
        idx = np.floor(np.arange(count) * step + 1e-9).astype(np.int64)
        return idx[idx < n_total]
    if n_frames <= 0:
        raise UserInputError(f"--frames must be positive (got {n_frames})")
    if n_total < n_frames:
        raise TooFewFrames(name, n_total, n_frames)
    return np.floor((np.arange(n_frames) + 0.5) * n_total / n_frames).astype(np.int64)


def _read_decord(path: Path, indices: np.ndarray, codec: str) -> np.ndarray:
    import decord

    threads = 1 if codec == "vp9" else 0
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
    if len(indices) and int(indices.max()) >= len(vr):
        raise IndexError(f"index {int(indices.max())} beyond decord's {len(vr)} frames")
    # each distinct frame once, in stream order: decord seeks back (re-decoding a GOP) for every index
    # below the one before, so unsorted or repeated indices would cost extra decodes
    unique, where = np.unique(indices, return_inverse=True)
    frames = vr.get_batch([int(i) for i in unique]).asnumpy()
    return frames[where.reshape(-1)] if len(unique) != len(indices) or np.any(unique != indices) else frames


def _packet_index(container, stream) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """From demuxing alone (no decoding): the pts of the stream's frames in display order and, per frame,
    the pts of the keyframe at or before it and the timestamp to seek to for that keyframe (its smaller
    of pts and dts; -1 where no keyframe precedes the frame). None if timestamps are missing or repeated:
    then only a sequential decode is safe."""
    pts, key_pts, key_seek = [], [], []
    for packet in container.demux(stream):
        if not packet.size or packet.is_discard:  # flush packets; frames an edit list drops
            continue
        if packet.pts is None:
            return None
        pts.append(packet.pts)
        if packet.is_keyframe:
            key_pts.append(packet.pts)
            key_seek.append(packet.pts if packet.dts is None else min(packet.pts, packet.dts))
    order = np.sort(np.asarray(pts, np.int64))
    if not key_pts or np.any(np.diff(order) <= 0):
        return None
    by_pts = np.argsort(np.asarray(key_pts, np.int64), kind="stable")
    key_pts = np.asarray(key_pts, np.int64)[by_pts]
    key_seek = np.asarray(key_seek, np.int64)[by_pts]
    at = np.searchsorted(key_pts, order, side="right") - 1
    ok = at >= 0
    return order, np.where(ok, key_pts[np.maximum(at, 0)], -1), np.where(ok, key_seek[np.maximum(at, 0)], -1)


def _read_pyav_seeking(container, stream, indices: np.ndarray) -> dict[int, np.ndarray] | None:
    """Decode only the groups of pictures that hold the wanted frames: seek to the keyframe before a
    wanted frame unless the decoder has already passed that keyframe (then decoding on is cheaper).
    Frames are matched by pts to their display-order index, and every frame the decoder gives from a
    keyframe on must be the index's next one, so the choice equals the sequential decode's. None (the
    caller decodes sequentially) if the container lacks usable timestamps, holds fewer frames than wanted,
    a seek does not land on a keyframe at or before the one asked for, or the decoder's frames are not the
    index's (frames it would not show, for instance)."""
    index = _packet_index(container, stream)
    if index is None:
        return None
    order, key_pts, key_seek = index
    wanted = sorted(set(int(i) for i in indices))
    if wanted[-1] >= len(order) or key_pts[wanted[0]] < 0:
        return None  # too few packets (the sequential path names the truncation) or no keyframe before
    out: dict[int, np.ndarray] = {}
    frames, last_pts, start = None, None, 0  # the decoder's frames, the pts of the last one, the keyframe's
    for i in wanted:
        target = int(order[i])
        if frames is None or last_pts is None or key_pts[i] > last_pts:
            sought = _decode_from_keyframe(container, stream, int(key_pts[i]), int(key_seek[i]))
            if sought is None:
                return None
            start, frames = sought
            last_pts, expect = None, int(np.searchsorted(order, start))  # index of the next frame due
        for frame in frames:
            if frame.pts is None:
                return None
            if frame.pts < start:  # leading frames of an open GOP, shown before the keyframe: not ours
                continue
            if expect >= len(order) or frame.pts != order[expect]:
                return None  # the decoder's frames are not the index's
            expect += 1
            last_pts = frame.pts
            if last_pts >= target:
                break
        if last_pts != target:
            return None  # the stream ended early
        out[i] = frame.to_ndarray(format="rgb24")
    return out


def _decode_from_keyframe(container, stream, key_pts: int, key_seek: int):
    """Seek to the keyframe at ``key_pts`` and return (the pts of the keyframe landed on, the decoded frames
    from it onwards), or None unless the first packet after the seek is a keyframe at or before it: containers without an exact index can land
    anywhere, and frames decoded from there would lack their references. Tries the pts first (where MP4
    and Matroska index keyframes), then ``key_seek`` (the smaller of pts and dts)."""
    for ts in dict.fromkeys((key_pts, key_seek)):
        container.seek(ts, backward=True, any_frame=False, stream=stream)
        packets = container.demux(stream)
        first = next((p for p in packets if p.size), None)
        if first is not None and first.is_keyframe and first.pts is not None and first.pts <= key_pts:
            return first.pts, _frames_of(first, packets)
    return None


def _frames_of(first, packets):
    yield from first.decode()
    for packet in packets:
        yield from packet.decode()


def _read_pyav_sequential(container, stream, path: Path, indices: np.ndarray, n_claimed: int) -> dict[int, np.ndarray]:
    """Decode from the start, keeping the wanted frames and stopping after the last one."""
    wanted: dict[int, np.ndarray] = {}
    needed = set(int(i) for i in indices)
    last = max(needed)
    count = 0
    for frame in container.decode(stream):
        if count in needed:
            wanted[count] = frame.to_ndarray(format="rgb24")
        count += 1
        if count > last:
            break
    if count <= last:
        raise DecodeError(
            f"{path}: stream ends after {count} frames but frame {last} was needed "
            f"(header says {n_claimed}; truncated file?); re-download or re-encode it"
        )
    return wanted


def _read_pyav(path: Path, indices: np.ndarray, n_claimed: int, seek: bool = True) -> np.ndarray:
    """Decode the wanted frames (display-order indices) with PyAV, converting only those to RGB.

    With ``seek``, only the groups of pictures holding them are decoded (`_read_pyav_seeking`), else
    (or where that cannot vouch for its frames) every frame up to the last wanted one; both give the
    same frames."""
    if len(indices) == 0:
        return np.zeros((0, 0, 0, 3), np.uint8)
    wanted = None
    for sequential in ((False, True) if seek else (True,)):
        container = _open(path)
        try:
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"
            if sequential:
                wanted = _read_pyav_sequential(container, stream, path, indices, n_claimed)
            else:
                try:
                    wanted = _read_pyav_seeking(container, stream, indices)
                except av.error.FFmpegError:
                    wanted = None
        finally:
            container.close()
        if wanted is not None:
            break
    return np.stack([wanted[int(i)] for i in indices])


def _upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def _decord_upright(frames: np.ndarray, info: VideoInfo) -> np.ndarray:
    """decord's frames turned upright, whether or not the installed decord applied the rotation itself.

    Some decord builds turn frames by the container's rotation (mp4 display matrix, Matroska ROTATE tag),
    others, or other containers, do not. What this decord did to this video is learnt from a test clip of
    the same container, rotation and kind of tag (`_decord_turn`); the decoded shape must then be the
    upright one (for 90/270 on a non-square frame it alone tells). Raises ValueError when neither says,
    so that PyAV decodes the video instead."""
    if info.rotation == 0:
        return frames
    upright_hw = (info.width, info.height) if info.rotation in (90, 270) else (info.height, info.width)
    coded_hw = (info.height, info.width)
    shape = tuple(frames.shape[1:3])
    turned = _decord_turn(info.container, info.rotation, info.rotation_tag)
    if upright_hw != coded_hw and shape in (upright_hw, coded_hw):  # the shape tells whether it turned
        turned = 0 if shape == coded_hw else turned if turned in (90, 270) else info.rotation
    if turned is None:
        raise ValueError(f"cannot tell whether decord applied the video's {info.rotation} degree rotation")
    out = _upright(frames, (info.rotation - turned) % 360)
    if tuple(out.shape[1:3]) != upright_hw:
        raise ValueError(f"decord gave {shape[1]}x{shape[0]} frames for a {info.width}x{info.height} video "
                         f"rotated by {info.rotation} degrees")
    return out


_TEST_CLIP_EXT = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "mkv"}


@functools.lru_cache(maxsize=None)
def _decord_turn(container: str, rotation: int, tag: bool) -> int | None:
    """Counter-clockwise degrees by which this decord turns frames of `container` videos carrying
    `rotation` (as a display matrix, or as the legacy tag), learnt once per process from a small test clip
    (None when no such clip can be written or decord reads it neither way)."""
    import decord

    ext = _TEST_CLIP_EXT.get(container)
    if ext is None:
        return None
    y, x = np.mgrid[0:64, 0:96]
    frames = np.stack([x * 2, y * 3, (x + y) % 256], axis=-1).astype(np.uint8)[None].repeat(2, axis=0)
    with tempfile.TemporaryDirectory(prefix="diffvqa-rotation-") as tmp:
        path = Path(tmp) / f"test.{ext}"
        try:
            write_clip(path, frames, codec="mpeg4", rotation=rotation, rotation_tag=tag)
            written = probe(path)
            if (written.rotation, written.rotation_tag) != (rotation, tag):  # the muxer dropped it
                return None
            got = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)[0].asnumpy().astype(int)
        except Exception:
            return None
    for k in range(4):
        turned = np.rot90(frames[0], k=k).astype(int)
        if turned.shape == got.shape and np.abs(turned - got).mean() < 8:
            return k * 90
    return None


def _has_decord() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:
        return False
    return True


def _read(info: VideoInfo, indices: np.ndarray, backend: str | dict) -> tuple[np.ndarray, str]:
    path = info.path
    if isinstance(backend, dict):  # the decoder another run used for this codec
        backend = backend.get(info.codec, "auto")
    if backend not in ("auto", "decord", "pyav"):
        raise UserInputError(f"unknown backend {backend!r}; use auto, decord or pyav")
    use_decord = backend == "decord" or (
        backend == "auto" and info.codec in DECORD_CODECS and _has_decord()
    )
    reasons = []
    if use_decord:
        try:
            return _decord_upright(_read_decord(path, indices, info.codec), info), "decord"
        except Exception as exc:
            reasons.append(f"decord: {_one_line(exc)}")
    try:
        return _upright(_read_pyav(path, indices, info.n_frames), info.rotation), "pyav"
    except DecodeError:
        raise
    except Exception as exc:
        reasons.append(f"PyAV: {_one_line(exc)}")
    raise DecodeError(f"{path}: cannot decode with decord or PyAV ({'; '.join(reasons)}); {REENCODE_HINT}")


def read_frames(path, indices, backend: str | dict = "auto") -> tuple[np.ndarray, str]:
    """Decode the given frame indices as uint8 RGB (N, H, W, 3), upright; returns (frames, backend used)."""
    info = probe(path)
    return _read(info, np.asarray(indices, dtype=np.int64).reshape(-1), backend)


def load_video_frames(
    path, n_frames: int | None = 8, fps: float | None = None, backend: str | dict = "auto"
) -> tuple[np.ndarray, np.ndarray, VideoInfo, str]:
    """Probe, sample indices and decode: returns (frames, indices, info, decoder used).

    `backend`: "auto", "decord", "pyav", or a {codec: decoder} map (per codec, "auto" for others)."""
    info = probe(path)
    indices = sample_indices(info.n_frames, n_frames, fps, info.fps, path=info.path)
    frames, used = _read(info, indices, backend)
    return frames, indices, info, used
