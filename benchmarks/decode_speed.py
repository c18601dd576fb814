"""Decoding cost of the frames stage one samples: PyAV before (decode every frame up to the last wanted one)
and after (seek to the keyframe before each wanted frame), decord beside them, and how many CPU cores keep
one GPU fed.

1. Length: 8 uniformly sampled frames (as `extract` takes them) of a long and a 10 s clip, same resolution,
   codec and GOP (default 5 min and 10 s at 1080p, H.264 GOP 250 and 60, 30 fps), with the number of frames
   each read decoded. Goal: long / short <= 2.
2. Per core (the process pinned to one CPU, so decoders run one thread): decode frames/s and RGB conversion
   time for 540p, 1080p and 2160p H.264 and VP9, the sampled frames/s per core they give at GOP 60 and 250,
   beside the GPU's demand in frames/s at 1, 4 and 50 steps (the floors of `stage1_flops.py` at 100% MFU,
   1 + crops views per frame) and the cores that demand needs.

Clips are written with PyAV into a temporary folder (low-complexity content and ultrafast/realtime presets
for the long clip, a scrolling noise texture for the per-core clips) and removed afterwards.

    python benchmarks/decode_speed.py                         # full run (~10 min on 2 shared cores)
    python benchmarks/decode_speed.py --long-s 60 --sizes 540 1080 --no-append   # quicker look
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import append_section, loadavg, machine_info, table, update_current  # noqa: E402

from diffvqa_cache.extraction import video  # noqa: E402

SIZES = {540: (960, 540), 1080: (1920, 1080), 2160: (3840, 2160)}
CODECS = {"h264": ("libx264", {"preset": "ultrafast"}), "vp9": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"})}


def yuv_frames(w: int, h: int, n: int, textured: bool, seed: int = 0) -> list[np.ndarray]:
    """n distinct yuv420p planes (h * 3 / 2, w): a moving gradient, plus scrolling noise if `textured`."""
    y, x = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(seed).integers(0, 48, (h, w + n * 8), dtype=np.uint8) if textured else None
    out = []
    for i in range(n):
        luma = ((x + 4 * i) % 256 // 2 + (y // 8) % 32 + 40).astype(np.uint8)
        if textured:
            luma = luma + noise[:, i * 8:i * 8 + w]
        chroma = np.full((h // 2, w), 128, np.uint8)
        chroma[:, : w // 2] = 128 + (i % 16)
        out.append(np.concatenate([luma, chroma]))
    return out


def write(path: Path, codec: str, w: int, h: int, n: int, gop: int, textured: bool, fps: int = 30) -> float:
    """Encode n frames (cycling 30 distinct ones); returns the seconds it took."""
    name, opts = CODECS[codec]
    frames = yuv_frames(w, h, 30, textured)
    t0 = time.perf_counter()
    with av.open(str(path), "w") as c:
        extra = {"x264-params": "scenecut=0"} if codec == "h264" else {}  # keyframes exactly every `gop` frames
        s = c.add_stream(name, rate=fps, options={**opts, **extra, "g": str(gop)})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(frames[i % 30], format="yuv420p")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return time.perf_counter() - t0


class _Counting:
    """A PyAV container that counts the frames its decoder returns (to report how many a read decoded)."""

    def __init__(self, container, counter):
        self._c, self._n = container, counter

    def __getattr__(self, name):
        return getattr(self._c, name)

    def demux(self, *args):
        for packet in self._c.demux(*args):
            yield _CountingPacket(packet, self._n)

    def decode(self, *args):
        for frame in self._c.decode(*args):
            self._n[0] += 1
            yield frame


class _CountingPacket:
    def __init__(self, packet, counter):
        self._p, self._n = packet, counter

    def __getattr__(self, name):
        return getattr(self._p, name)

    def decode(self):
        frames = self._p.decode()
        self._n[0] += len(frames)
        return frames


def repeat_clip(segment: Path, path: Path, times: int) -> float:
    """A long clip made of `times` copies of `segment` (packets copied, timestamps shifted; the segment
    starts with a keyframe and holds whole GOPs, so the GOP structure is the segment's); returns seconds."""
    t0 = time.perf_counter()
    with av.open(str(segment)) as src, av.open(str(path), "w") as dst:
        ins = src.streams.video[0]
        out = dst.add_stream_from_template(ins)
        packets = [p for p in src.demux(ins) if p.size]
        span = max(p.pts for p in packets) + packets[0].duration - min(p.pts for p in packets)
        for k in range(times):
            for p in packets:
                q = av.Packet(bytes(p))
                q.pts, q.dts = p.pts + k * span, p.dts + k * span
                q.is_keyframe, q.time_base, q.stream = p.is_keyframe, p.time_base, out
                dst.mux(q)
    return time.perf_counter() - t0


def sampled(path: Path, how: str, n: int = 8) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) to probe and decode n uniformly sampled frames: 'pyav-before'
    (sequential), 'pyav' (seeking), 'decord'."""
    t0, c0 = time.perf_counter(), time.process_time()
    info = video.probe(path)
    idx = video.sample_indices(info.n_frames, n)
    if how == "decord":
        frames = video._read_decord(path, idx, info.codec)
    else:
        frames = video._read_pyav(path, idx, info.n_frames, seek=how == "pyav")
    assert len(frames) == n
    return time.perf_counter() - t0, time.process_time() - c0


def decoded_count(path: Path, n: int = 8) -> int:
    """Frames the seeking PyAV read decodes for n sampled frames (untimed)."""
    info = video.probe(path)
    counter, real = [0], video._open
    video._open = lambda p: _Counting(real(p), counter)
    try:
        video._read_pyav(path, video.sample_indices(info.n_frames, n), info.n_frames, seek=True)
    finally:
        video._open = real
    return counter[0]


def decode_rates(path: Path, limit: int = 120) -> tuple[float, float]:
    """(frames per CPU second of a plain decode without conversion, CPU seconds to convert one frame to RGB):
    CPU time, so that other jobs on a shared machine do not count."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        t0, k, kept = time.process_time(), 0, []
        for f in c.decode(s):
            k += 1
            if len(kept) < 4:
                kept.append(f)
            if k >= limit:
                break
        fps = k / (time.process_time() - t0)
    t0 = time.process_time()
    for f in kept:
        f.to_ndarray(format="rgb24")
    return fps, (time.process_time() - t0) / len(kept)


def best(fn, repeats: int):
    return min(fn() for _ in range(repeats))


def gpu_demand(crops: int) -> dict[int, float]:
    """Frames/s one GPU consumes at 100% MFU, per step count (floors of stage1_flops.py, 512 px views)."""
    from _common import PEAK_BF16_TFLOPS
    from stage1_flops import flops_per_view

    f = flops_per_view("meta")
    return {n: PEAK_BF16_TFLOPS * 1e12 / (f["vae_encode"] + n * f["unet+controller"]) / (1 + crops) for n in (1, 4, 50)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long-s", type=float, default=300.0, help="length of the long clip (seconds)")
    ap.add_argument("--long-size", type=int, default=1080, choices=sorted(SIZES))
    ap.add_argument("--gops", type=int, nargs="+", default=[250, 60], help="keyframe intervals of the length clips")
    ap.add_argument("--sizes", type=int, nargs="+", default=sorted(SIZES), choices=sorted(SIZES))
    ap.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    ap.add_argument("--core-clip-s", type=float, default=4.0, help="length of the per-core clips (seconds)")
    ap.add_argument("--crops", type=int, default=1, help="cropped views per frame (extract's default 1)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    info = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="decode_speed_"))
    has_decord = video._has_decord()
    try:
        # 1. length: long vs 10 s clip, same size and GOP
        w, h = SIZES[args.long_size]
        hows = ["pyav-before", "pyav"] + (["decord"] if has_decord else [])
        rows1, gen = [], {}
        for gop in args.gops:
            short, seg, long_ = (tmp / f"len_{gop}_{n}.mp4" for n in ("10", "segment", "long"))
            n_seg = gop * max(1, round(300 / gop))  # whole GOPs, about 10 s
            gen[gop] = write(short, "h264", w, h, 300, gop, textured=False) + \
                write(seg, "h264", w, h, n_seg, gop, textured=False)
            gen[gop] += repeat_clip(seg, long_, max(1, round(args.long_s * 30 / n_seg)))
            clips = {10.0: short, args.long_s: long_}
            n_long = video.probe(long_).n_frames
            print(f"wrote 10 s and {n_long / 30:g} s {args.long_size}p H.264 GOP {gop} in {gen[gop]:.1f} s", flush=True)
            counts = {secs: decoded_count(p) for secs, p in clips.items()}
            for how in hows:
                t = {secs: best(lambda: sampled(p, how), 1 if how == "pyav-before" and secs > 10 else args.repeats)
                     for secs, p in clips.items()}
                decoded = ("" if how == "decord" else " / ".join(
                    str(counts[s] if how == "pyav" else int(video.sample_indices(video.probe(p).n_frames, 8)[-1]) + 1)
                    for s, p in clips.items()))
                (ws, cs), (wl, cl) = t[10.0], t[args.long_s]
                rows1.append([gop, how, ws, wl, wl / ws, cs, cl, cl / cs, decoded])
                print(rows1[-1], flush=True)
            for p in (short, seg, long_):
                p.unlink()
        long_name = f"{args.long_s:g} s"
        part1 = table(["GOP", "decoder", "10 s: wall s", f"{long_name}: wall s", "wall long / short",
                       "10 s: CPU s", f"{long_name}: CPU s", "CPU long / short (goal <= 2)",
                       "frames decoded (10 s / long)"], rows1)
        part1 = (f"{args.long_size}p H.264 (ultrafast, no scene cuts, low-complexity content), 30 fps; probe + decode of "
                 f"8 uniformly sampled frames, best of {args.repeats} by wall time (pyav-before on the long clip: 1 run), "
                 f"decoder threads on (as extract runs); CPU = process CPU time, all threads (steadier than wall time "
                 f"on a shared machine). pyav-before is the sequential decode the code used before (still the "
                 f"fallback); pyav seeks. The long clip repeats a ~10 s segment of whole GOPs (packets copied), so its "
                 f"GOPs are the short clip's. Clip generation (s): "
                 + ", ".join(f"GOP {g}: {v:.0f}" for g, v in gen.items()) + ".\n\n" + part1)

        # 2. per core
        demand = gpu_demand(args.crops)
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core: decoders pick one thread
        rows2 = []
        for codec in args.codecs:
            for size in args.sizes:
                w, h = SIZES[size]
                p = tmp / f"core_{codec}_{size}.mkv"
                g = write(p, codec, w, h, int(args.core_clip_s * 30), 30, textured=True)
                fps, conv = max((decode_rates(p) for _ in range(args.repeats)), key=lambda r: r[0])
                per = {gop: 1.0 / ((gop / 2 + 1) / fps + conv) for gop in (60, 250)}
                row = [codec, f"{size}p", p.stat().st_size * 8 / args.core_clip_s / 1e6, fps, conv * 1e3,
                       per[60], per[250], *(f"{demand[n] / per[60]:.2g} / {demand[n] / per[250]:.2g}" for n in (1, 4, 50))]
                rows2.append(row)
                print(row, f"(generated in {g:.0f} s)", flush=True)
                p.unlink()
        part2 = table(["codec", "size", "Mbit/s", "decode frames/s/core", "RGB ms/frame",
                       "sampled frames/s/core, GOP 60", "GOP 250",
                       "cores per GPU, 1 step (GOP 60 / 250)", "4 steps", "50 steps"], rows2)
        dem = ", ".join(f"{n} step{'s' if n > 1 else ''} {v:.0f}" for n, v in demand.items())
        part2 = (f"One core (process pinned with sched_setaffinity, so PyAV decodes with one thread); "
                 f"{args.core_clip_s:g} s clips at 30 fps, scrolling-noise texture (H.264 ultrafast, VP9 realtime "
                 f"cpu-used 8). Decode = plain PyAV decode without conversion (best of {args.repeats}); a sampled "
                 f"frame far from the previous one costs the decode of GOP/2 + 1 frames on average (checked by the "
                 f"decoded counts above) and one RGB conversion: sampled frames/s/core = 1 / ((GOP/2 + 1) / decode + "
                 f"RGB). GPU demand at 100% MFU: {dem} frames/s ({1 + args.crops} views per frame, floors of "
                 f"stage1_flops.py); cores per GPU = demand / sampled frames/s/core (at a real MFU m, multiply by m)."
                 f"\n\n" + part2)
        print(part1, "\n", part2, sep="\n")
        if not args.no_append:
            append_section("Decoding: cost of the sampled frames (PyAV seeking)", part1 + "\n\n" + part2, info)
            cpu = {(r[0], r[1]): r[7] for r in rows1}
            update_current("8 sampled frames of a long vs a 10 s clip, CPU time (goal <= 2)",
                           f"{long_name} vs 10 s, {args.long_size}p H.264: " + "; ".join(
                               f"GOP {g}: " + ", ".join(f"{h} {cpu[(g, h)]:.2f}" for h in hows if (g, h) in cpu)
                               for g in args.gops), info=info)
            update_current("CPU cores to feed one GPU at 100% MFU, 1 / 4 / 50 steps, GOP 60",
                           "; ".join(f"{r[1]} {r[0]} " + " / ".join(c.split(" / ")[0] for c in r[7:10]) for r in rows2),
                           info=info)
        print("load at end:", loadavg())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
