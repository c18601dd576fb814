"""Cache I/O: shard write and full-cache read throughput against plain sequential I/O of the same bytes.

A synthetic cache with SD-size pooled features (grid 8: F_MS 1280, 1280, 640, 320 channels at 8x8; latent
4x64x64; pixels 3x224x224; fp16 / uint8; branches S and D, 1 crop, 8 frames) is written with
`cache.write_shard` exactly as extraction does (config.json, labels.csv, shards + records, manifest).
Reads are timed with the page cache warm (every file is read once first), median of --repeats.

    python benchmarks/cache_io.py                 # 192 videos (~2 GB), deleted at the end
    python benchmarks/cache_io.py --videos 96 --keep /tmp/cache_io
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import append_section, loadavg, machine_info, median_time, set_threads, table, update_current  # noqa: E402


def mem_available_gb() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=192)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (load_table pools/resizes with torch)")
    ap.add_argument("--lzf-shards", type=int, default=2, help="shards rewritten with lzf for reference (0: skip)")
    ap.add_argument("--keep", type=Path, default=None, help="write here and keep the cache")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    set_threads(args.threads)
    info = machine_info()

    import h5py

    from diffvqa_cache.cache.folder import FeatureCache, file_sha256
    from diffvqa_cache.training.data import load_table
    from diffvqa_cache.training.rules import LoadSpec

    root = args.keep or Path(tempfile.mkdtemp(prefix="cacheio-"))
    rows = []
    try:
        # ---- write (write_shard: HDF5 write + rename + sha256 of the file + record JSON)
        from diffvqa_cache.synthetic import write_synthetic_cache

        made = write_synthetic_cache(root, args.videos, shard_size=args.shard_size)
        cache_dir, write_s, nbytes = made.cache_dir, made.write_seconds, made.nbytes
        cache = FeatureCache(cache_dir)
        files = cache.shard_files()
        gb = nbytes / 1e9
        print(f"cache {cache_dir}: {len(files)} shards, {gb:.2f} GB, write_shard total {write_s:.1f} s; load {loadavg()}")
        for f in files:  # warm the page cache
            np.fromfile(f, dtype=np.uint8)
        sha_s, _ = median_time(lambda: [file_sha256(f) for f in files], 1)
        blobs = [np.fromfile(f, dtype=np.uint8) for f in files[:2]]
        scratch = root / "plain-write"
        scratch.mkdir(exist_ok=True)

        def plain_write():
            for i, b in enumerate(blobs):
                with open(scratch / f"{i}.bin", "wb") as fh:
                    fh.write(b.data)
        pw_s, _ = median_time(plain_write, args.repeats)
        pw_gb = sum(b.nbytes for b in blobs) / 1e9
        blobs.clear()
        shutil.rmtree(scratch)
        rows.append(["write", "write_shard (HDF5 + sha256 + record)", gb, write_s, gb / write_s, ""])
        rows.append(["write", "  of which sha256 of the files", gb, sha_s, gb / sha_s, ""])
        rows.append(["write", "plain sequential write of the same bytes (2 shards, page cache)", pw_gb, pw_s, pw_gb / pw_s, ""])

        # ---- reads, page cache warm
        def dd():
            for f in files:
                subprocess.run(["dd", f"if={f}", "of=/dev/null", "bs=16M"], check=True, capture_output=True)

        def fromfile():
            for f in files:
                np.fromfile(f, dtype=np.uint8)

        def read_shards():
            for f in files:
                cache.read_shard(f)

        def iter_videos():
            for _k, _a in cache.iter_videos():
                pass

        def table_default():
            load_table(cache, LoadSpec())

        def table_no_pixels():
            load_table(cache, LoadSpec(use_pixels=False))

        base = None
        for name, fn in (("dd bs=16M", dd), ("numpy fromfile", fromfile), ("FeatureCache.read_shard (all datasets)", read_shards),
                         ("FeatureCache.iter_videos", iter_videos), ("load_table, LoadSpec() (pixels resized 224->64)", table_default),
                         ("load_table, no pixels", table_no_pixels)):
            m, ts = median_time(fn, args.repeats)
            base = base or m
            rows.append(["read", name, gb, m, gb / m, m / base])
            print(rows[-1], " ".join(f"{t:.2f}" for t in ts), f"load {loadavg()}", flush=True)
        rows.append(["", f"MemAvailable during the reads: {mem_available_gb():.1f} GiB (the files must stay in the page cache)", "", "", "", ""])

        # ---- lzf reference on a few shards
        if args.lzf_shards:
            sub = files[:args.lzf_shards]
            lzf_files = []
            t_w = 0.0
            for f in sub:
                _keys, _starts, arrays = cache.read_shard(f)
                out = root / (f.stem + "-lzf.h5")
                t0 = time.perf_counter()
                with h5py.File(f, "r") as src, h5py.File(out, "w", libver="latest") as dst:
                    for n in ("keys", "n_frames", "row_start"):
                        dst.create_dataset(n, data=src[n][:])
                    for n, a in arrays.items():
                        chunks = (min(len(a), 8),) + a.shape[1:] if a.ndim > 1 else None  # one video per chunk
                        dst.create_dataset(n, data=a, compression="lzf" if a.ndim > 1 else None, chunks=chunks)
                t_w += time.perf_counter() - t0
                lzf_files.append(out)
            raw_gb = sum(f.stat().st_size for f in sub) / 1e9
            lzf_gb = sum(f.stat().st_size for f in lzf_files) / 1e9
            for f in lzf_files:
                np.fromfile(f, dtype=np.uint8)
            m_raw, _ = median_time(lambda: [cache.read_shard(f) for f in sub], args.repeats)
            m_lzf, _ = median_time(lambda: [cache.read_shard(f) for f in lzf_files], args.repeats)
            rows.append(["lzf", f"read_shard, {len(sub)} uncompressed shards", raw_gb, m_raw, raw_gb / m_raw, 1.0])
            rows.append(["lzf", f"read_shard, same shards lzf (chunk = 1 video), {lzf_gb / raw_gb:.0%} of the size",
                         raw_gb, m_lzf, raw_gb / m_lzf, m_lzf / m_raw])
            rows.append(["lzf", "write lzf (from memory)", raw_gb, t_w, raw_gb / t_w, ""])
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    t = table(["op", "what", "GB (logical)", "median s", "GB/s", "time / first read row of its group"], rows)
    print(t)
    body = (f"Synthetic SD-size cache: {args.videos} videos x 8 frames, S + D (1 crop), grid 8 (F_MS 1280/1280/640/320 "
            f"x 8x8 fp16), latent 4x64x64 fp16, pixels 3x224x224 uint8 = {nbytes / args.videos / 1e6:.1f} MB per video, "
            f"{len(files)} shards of {args.shard_size} videos, {gb:.2f} GB. Reads from the page cache (warm), median of "
            f"{args.repeats}; torch threads {args.threads}. GB/s is always file bytes / time (for lzf: uncompressed "
            f"bytes).\n\n" + t)
    if not args.no_append:
        append_section("Cache I/O: shards vs plain sequential I/O", body, info)
        rate = {r[1]: r[4] for r in rows if r[0] in ("read", "write")}
        update_current("cache read: read_shard / iter_videos vs dd (page cache)",
                       f"{rate['FeatureCache.read_shard (all datasets)']:.1f} / {rate['FeatureCache.iter_videos']:.1f} "
                       f"GB/s vs {rate['dd bs=16M']:.1f} GB/s", info=info)
        update_current("load_table (read, select, pool, resize pixels, NaN check)",
                       f"{rate['load_table, LoadSpec() (pixels resized 224->64)']:.2f} GB/s", info=info)
        update_current("write_shard (HDF5 + sha256) vs a plain write (page cache)",
                       f"{rate['write_shard (HDF5 + sha256 + record)']:.2f} GB/s vs "
                       f"{rate['plain sequential write of the same bytes (2 shards, page cache)']:.2f} GB/s", info=info)


if __name__ == "__main__":
    main()
