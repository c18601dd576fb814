"""The on-disk feature cache between the two stages: sharded HDF5 files, per-shard records, a manifest.

Layout (see docs/cache-format.md):
    <out>/<dataset>/<fingerprint>/config.json        settings, identities, fingerprint (written first)
                                  labels.csv         key, mos, split, path of every listed video
                                  shards/shard-00000.h5     features, rows = (video, frame)
                                  shards/shard-00000.json   the shard's record: videos, failures, sha256 (written last)
                                  manifest.json      every complete shard, failed and missing videos (assembled last)
A shard counts as complete only when its record exists and the HDF5 file matches it; files are written
under a temporary name and renamed, so a killed run never leaves a shard that looks complete.
"""

from __future__ import annotations

import csv
import errno
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from diffvqa_cache import __version__
from diffvqa_cache.cache.branches import BRANCHES, N_LEVELS, BranchFeatures
from diffvqa_cache.cache.settings import EXTRACTOR_VERSION, CacheConfig
from diffvqa_cache.errors import CacheError
from diffvqa_cache.files import (
    atomic_path,
    claim_lock,
    file_sha256,
    remove_leftovers,
    write_csv_atomic,
    write_json_atomic,
)

FORMAT_VERSION = 1
SHARD_DIR = "shards"
# How to recompute damaged shards: a plain rerun trusts a shard of the recorded size, --verify re-hashes it.
VERIFY_HINT = "--verify to recompute them"
ALL_PARTS = BranchFeatures(latent=True, ms=(True,) * N_LEVELS, pixels=True)  # a selection of every part


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}"


# ---------------------------------------------------------------- the flat HDF5 names of a branch's parts
def part_names(branch: str, parts: BranchFeatures) -> list[str]:
    """HDF5 dataset names of the parts present in `parts` (any non-None value), in file order."""
    return ([f"{branch}/latent"] if parts.latent is not None else []) \
        + ([f"{branch}/pixels"] if parts.pixels is not None else []) \
        + [f"{branch}/ms{lv}" for lv, m in enumerate(parts.ms) if m is not None]


def named_parts(branch: str, parts: BranchFeatures) -> list[tuple[str, object]]:
    """(HDF5 name, value) of every part present, in file order."""
    return list(zip(part_names(branch, parts), [x for x in (parts.latent, parts.pixels, *parts.ms) if x is not None]))


def branch_from(arrays: dict, branch: str) -> BranchFeatures | None:
    """Branch `branch`'s parts from a {HDF5 name: value} mapping (None when it has none)."""
    if not any(n.startswith(f"{branch}/") and n != f"{branch}/crop_origin" for n in arrays):
        return None
    return BranchFeatures(latent=arrays.get(f"{branch}/latent"), pixels=arrays.get(f"{branch}/pixels"),
                          ms=tuple(arrays.get(f"{branch}/ms{lv}") for lv in range(N_LEVELS)))


def nonfinite_rows(a: np.ndarray) -> np.ndarray:
    """(len(a),) bool: rows of float array `a` holding a NaN or Inf."""
    flat = a.reshape(len(a), -1)
    if a.dtype == np.float16:  # exponent bits all ones = Inf/NaN; ~3x faster than np.isfinite on fp16
        return ((flat.view(np.uint16) & 0x7C00) == 0x7C00).any(axis=1)
    return ~np.isfinite(flat).all(axis=1)


def nonfinite_error(file, key: str, name: str) -> CacheError:
    """The one-line error for a cached video whose dataset `name` holds a NaN or Inf."""
    return CacheError(f"{file}: video {key!r} has NaN/Inf features ({name}); re-extract it (delete "
                      f"{Path(file).name} and rerun extract) or drop it from the labels")


# ---------------------------------------------------------------- one video's features
@dataclass
class VideoFeatures:
    """All arrays of one video, rows = sampled frames (T). Branch S has 1 view per frame, D has K."""

    key: str
    frame_index: np.ndarray  # (T,) int32, indices into the decoded video
    branches: dict[str, BranchFeatures]  # latent (T,K,4,h,w) f16, ms (T,K,C,g,g) f16, pixels (T,K,3,P,P) u8
    crop_origin: np.ndarray | None = None  # (T, K, 2) int32: top, left of each D crop in the native frame
    decoder: str = ""  # which decoder produced the frames ("decord", "pyav"), recorded in the shard's record
    codec: str = ""

    def flat(self) -> dict[str, np.ndarray]:
        """The shard's per-row datasets by name ("frame_index", "S/latent", ..., "D/crop_origin")."""
        out = {"frame_index": self.frame_index}
        for b in BRANCHES:
            if b in self.branches:
                out.update(named_parts(b, self.branches[b]))
        if self.crop_origin is not None:
            out["D/crop_origin"] = self.crop_origin
        return out

    def is_finite(self) -> bool:
        """No NaN or Inf in any float array (pixels are uint8)."""
        return not any(a.dtype.kind == "f" and nonfinite_rows(a).any()
                       for v in self.branches.values() for a in v.parts())

    @classmethod
    def from_flat(cls, key: str, arrays: dict[str, np.ndarray]) -> "VideoFeatures":
        branches = {b: v for b in BRANCHES if (v := branch_from(arrays, b)) is not None}
        return cls(key, arrays["frame_index"], branches, arrays.get("D/crop_origin"))


# ---------------------------------------------------------------- writing
def write_shard(path: Path, shard_id: int, fingerprint: str, videos: list[VideoFeatures], failed: list[dict],
                keys_planned: list[str]) -> dict:
    """Write one shard HDF5 atomically, then its record JSON (the completion mark). Returns the record."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    n_frames = np.array([len(v.frame_index) for v in videos], dtype=np.int64)
    flats = [v.flat() for v in videos]
    try:
        with atomic_path(path) as tmp, h5py.File(tmp, "w", libver="latest") as f:
            f.attrs.update(format_version=FORMAT_VERSION, fingerprint=fingerprint, shard=shard_id)
            f.create_dataset("keys", data=np.array([v.key for v in videos], dtype=object),
                             dtype=h5py.string_dtype())
            f.create_dataset("n_frames", data=n_frames)
            f.create_dataset("row_start", data=np.concatenate([[0], np.cumsum(n_frames)[:-1]]).astype(np.int64))
            f.create_dataset("frame_index", data=_concat([a["frame_index"] for a in flats], np.int32))
            for name in (list(flats[0])[1:] if flats else []):
                # Uncompressed and contiguous: fp16 features barely compress and this reads fastest.
                f.create_dataset(name, data=_concat([a[name] for a in flats]))
    except OSError as exc:
        if exc.errno == errno.ENOSPC or "No space left" in str(exc):
            raise CacheError(f"disk full while writing {path.name} in {path.parent}; the partial shard was removed, "
                             "the rest of the cache is intact: free space and rerun the same command") from None
        raise
    record = {
        "shard": shard_id, "file": path.name, "fingerprint": fingerprint, "videos": [v.key for v in videos],
        "n_frames": n_frames.tolist(), "decoders": [v.decoder for v in videos], "codecs": [v.codec for v in videos],
        "failed": failed, "planned": keys_planned,
        "bytes": path.stat().st_size, "sha256": file_sha256(path), "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json_atomic(path.with_suffix(".json"), record)
    return record


def _concat(parts: list[np.ndarray], dtype=None) -> np.ndarray:
    if not parts:
        return np.zeros((0,), dtype=dtype or np.float16)
    out = np.concatenate(parts)
    return out.astype(dtype) if dtype is not None else out


def write_labels(path: Path, rows: list[tuple[str, float, str, str]]) -> None:
    """labels.csv: key, mos, split, path for every listed video (labels are joined by key, never position)."""
    write_csv_atomic(path, ["key", "mos", "split", "path"], rows)


def labels_conflict(path: Path, rows: list[tuple[str, float, str, str]]) -> str | None:
    """How `rows` (key, mos, split, path) would drop or swap videos of the labels.csv at `path`, or None.

    A cache folder holds one video list: a rerun may add videos (or change their MOS), never drop a video
    the folder lists or give its key to another file (another dataset of the same kind and settings)."""
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        old = {row["key"]: row["path"] for row in csv.DictReader(f)}
    new = {key: where for key, _, _, where in rows}
    dropped = [k for k in old if k not in new]
    if dropped:
        return (f"holds {len(old)} listed videos, {len(dropped)} of which this run does not list "
                f"(first: {old[dropped[0]]})")
    moved = [k for k in old if old[k] != new[k]]
    if moved:
        return (f"holds video {moved[0]!r} from {old[moved[0]]}, this run lists it at {new[moved[0]]}"
                f"{f' (and {len(moved) - 1} more)' if len(moved) > 1 else ''}")
    return None


# ---------------------------------------------------------------- layout and completion
class CacheDir:
    """Paths and bookkeeping of one cache directory (no HDF5 reading)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.shards = self.path / SHARD_DIR

    def shard_path(self, shard_id: int) -> Path:
        return self.shards / f"{shard_name(shard_id)}.h5"

    def record(self, shard_id: int) -> dict | None:
        try:
            return json.loads(self.shard_path(shard_id).with_suffix(".json").read_text())
        except (OSError, ValueError):
            return None

    def is_complete(self, shard_id: int, planned: list[str], fingerprint: str, deep: bool = False) -> bool:
        """Record present, planned for the same videos, file of the recorded size (and checksum when `deep`)."""
        rec, h5 = self.record(shard_id), self.shard_path(shard_id)
        ok = (rec is not None and rec.get("planned") == planned and rec.get("fingerprint") == fingerprint
              and h5.is_file() and h5.stat().st_size == rec.get("bytes"))
        return ok and (not deep or file_sha256(h5) == rec.get("sha256"))

    def needs_work(self, shard_id: int, planned: list[str], fingerprint: str, retry_failed: bool = False,
                   deep: bool = False) -> bool:
        """Shard to (re)extract: not complete, or complete with failed videos and `retry_failed`."""
        return (not self.is_complete(shard_id, planned, fingerprint, deep)
                or (retry_failed and bool(self.record(shard_id)["failed"])))

    def remove_leftovers(self) -> list[Path]:
        """Temporary files of killed runs (a run that starts on this cache calls it)."""
        return remove_leftovers(self.path)

    def claim(self, shard_id: int) -> bool:
        """Take shard `shard_id` for this process (a lock file, created atomically); False if another live
        process holds it. A lock left by a dead process on this host is taken over."""
        return claim_lock(self.shard_path(shard_id).with_suffix(".lock")) is None

    def release(self, shard_id: int) -> None:
        self.shard_path(shard_id).with_suffix(".lock").unlink(missing_ok=True)

    def write_manifest(self, config: CacheConfig, plan: list[list[str]], listed_missing: list[str]) -> dict:
        """Assemble the manifest from the complete shards on disk (written last, atomically)."""
        fp = config.fingerprint
        shards, done, failed = [], [], []
        for i, keys in enumerate(plan):
            if self.is_complete(i, keys, fp):
                rec = self.record(i)
                shards.append({k: rec.get(k) for k in ("shard", "file", "videos", "n_frames", "decoders", "codecs", "failed",
                                                        "bytes", "sha256")})
                done += rec["videos"]
                failed += rec["failed"]
        finished = set(done) | {f["video"] for f in failed}
        not_extracted = [k for keys in plan for k in keys if k not in finished]
        manifest = {
            "format_version": FORMAT_VERSION, "package_version": __version__, "fingerprint": fp,
            "config": config.to_dict(), "shards": shards, "n_shards_planned": len(plan), "videos": len(done),
            "failed": failed, "missing_on_disk": listed_missing, "not_extracted": not_extracted,
            "complete": not not_extracted, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json_atomic(self.path / "manifest.json", manifest)
        return manifest


def plan_shards(keys: list[str], shard_size: int) -> list[list[str]]:
    """Shard i holds the videos at positions [i*shard_size, (i+1)*shard_size) of the label order."""
    return [keys[i:i + shard_size] for i in range(0, len(keys), shard_size)]


# ---------------------------------------------------------------- reading
def holds_cache(path: Path | str) -> bool:
    """Whether PATH is a cache directory or a folder holding one (a config.json beside shards/, depth 0-2)."""
    return any((p.parent / "shards").is_dir() for pattern in ("config.json", "*/config.json", "*/*/config.json")
               for p in Path(path).expanduser().glob(pattern))


def find_cache_dir(path: Path | str) -> Path:
    """PATH itself if it holds a config.json, else the single cache directory below it (<out>/<dataset>/<fp>)."""
    path = Path(path).expanduser()
    if (path / "config.json").is_file():
        return path
    if not path.exists():
        raise CacheError(f"{path}: no such cache directory; pass the folder `extract` printed")
    found = sorted({p.parent for p in path.glob("*/config.json")} | {p.parent for p in path.glob("*/*/config.json")})
    if len(found) == 1:
        return found[0]
    if not found:
        raise CacheError(f"{path}: no cache here (no config.json at depth 0-2); pass the folder `extract` printed")
    current = [p for p in found if _recorded_extractor(p) == EXTRACTOR_VERSION]
    if len(current) == 1:  # after an upgrade: the new extraction beside the stale one
        from diffvqa_cache.progress import err

        err.print(f"[yellow]{path}: using {current[0].relative_to(path)}; {len(found) - 1} cache(s) of older extractor "
                  "versions beside it are not used[/]")
        return current[0]
    raise CacheError(f"{path} holds {len(found)} caches ({', '.join(str(p.relative_to(path)) for p in found[:4])}"
                     f"{', ...' if len(found) > 4 else ''}); pass one of them")


def _recorded_extractor(cache_dir: Path) -> str | None:
    """The extractor version a cache folder's config.json records (None: not recorded, or unreadable)."""
    try:
        return json.loads((cache_dir / "config.json").read_text()).get("extractor_version")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class ShardArrays:
    """One shard read in big contiguous reads: the selected parts over all its rows."""

    file: Path
    keys: list[str]
    row_start: np.ndarray  # (V,) first row of each video
    frame_index: np.ndarray  # (R,)
    branches: dict[str, BranchFeatures]  # arrays over all rows (R, K, ...)
    crop_origin: np.ndarray | None = None
    rows: list[slice] = field(init=False)

    def __post_init__(self):
        ends = np.append(self.row_start[1:], len(self.frame_index))
        self.rows = [slice(int(s), int(e)) for s, e in zip(self.row_start, ends)]

    def video(self, i: int) -> VideoFeatures:
        r = self.rows[i]
        return VideoFeatures(self.keys[i], self.frame_index[r], {b: v.map(lambda a: a[r]) for b, v in self.branches.items()},
                             None if self.crop_origin is None else self.crop_origin[r])

    def check_finite(self) -> None:
        """One pass over each float array; names the first video with a NaN or Inf."""
        for b, parts in self.branches.items():
            for name, a in named_parts(b, parts):
                if a.dtype.kind != "f":
                    continue
                bad = nonfinite_rows(a)
                if bad.any():
                    k = self.keys[int(np.searchsorted(self.row_start, int(np.flatnonzero(bad)[0]), side="right")) - 1]
                    raise nonfinite_error(self.file, k, name)


@dataclass(frozen=True)
class PartLayout:
    """Where one HDF5 dataset's rows lie in its shard file (uncompressed and contiguous)."""

    offset: int  # byte offset of row 0
    row_shape: tuple[int, ...]  # (K, C, h, w) or (K, 3, P, P)
    dtype: np.dtype

    @property
    def block_bytes(self) -> int:
        """Bytes of one (row, crop): a row holds K such blocks back to back."""
        return int(np.prod(self.row_shape[1:])) * self.dtype.itemsize


@dataclass
class ShardLayout:
    """A shard's videos and the file position of each selected dataset, for reads without HDF5."""

    file: Path
    keys: list[str]
    row_start: np.ndarray  # (V,)
    n_frames: np.ndarray  # (V,)
    parts: dict[str, PartLayout]


def shard_layout(file: Path, names: list[str]) -> ShardLayout:
    """The layout of datasets `names` in shard `file`; refuses datasets that are not contiguous."""
    import h5py

    try:
        with h5py.File(file, "r") as f:
            keys = [k.decode() if isinstance(k, bytes) else k for k in f["keys"][:]]
            parts = {}
            for n in names:
                d = f[n]
                offset = d.id.get_offset()
                if d.chunks is not None or offset is None:
                    raise CacheError(f"{file}: dataset {n} is chunked or compressed, so it cannot be read in place; "
                                     "fit with --set data=memory or re-extract with this version")
                parts[n] = PartLayout(int(offset), tuple(d.shape[1:]), np.dtype(d.dtype))
            return ShardLayout(Path(file), keys, f["row_start"][:].astype(np.int64), f["n_frames"][:].astype(np.int64),
                               parts)
    except OSError as exc:
        raise CacheError(f"{file}: unreadable shard ({exc}); run `diffvqa-cache cache verify` then "
                         "rerun the same extract command with --verify to recompute it") from None


class FeatureCache:
    """Read access to a cache: by video id, shard by shard, without importing diffusers."""

    def __init__(self, path: Path | str):
        self.path = find_cache_dir(path)
        self.dir = CacheDir(self.path)
        self.config = CacheConfig.load(self.path / "config.json")
        self.fingerprint = self.config.fingerprint
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            raise CacheError(f"{self.path}: no manifest.json, extraction has not finished a single pass; "
                             "rerun the same `diffvqa-cache extract` command")
        self.manifest = json.loads(mpath.read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"{self.path}: cache format {self.manifest.get('format_version')}, this version reads "
                             f"{FORMAT_VERSION}; re-extract with this version")
        self._where = {k: (s["file"], i) for s in self.manifest["shards"] for i, k in enumerate(s["videos"])}
        self.keys = [k for s in self.manifest["shards"] for k in s["videos"]]
        self.labels = self._read_labels()

    def _read_labels(self) -> dict[str, dict]:
        out = {}
        with open(self.path / "labels.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                out[row["key"]] = {"mos": float(row["mos"]), "split": row["split"], "path": row["path"]}
        return out

    def __len__(self) -> int:
        return len(self.keys)

    def check_complete(self, verify: bool = False) -> None:
        """Before training: every shard present at its recorded size (and checksum with `verify`), all extracted."""
        damaged = [s["file"] for s in self.manifest["shards"]
                   if not (self.dir.shards / s["file"]).is_file()
                   or (self.dir.shards / s["file"]).stat().st_size != s["bytes"]]
        if damaged:
            raise CacheError(f"{self.path}: damaged or missing shards {damaged[:5]}; rerun the same extract command "
                             f"with {VERIFY_HINT} (`diffvqa-cache cache verify` lists the damage)")
        if verify:
            problems, _ = verify_cache(self.path)
            if problems:
                raise CacheError(f"{self.path}: damaged or missing shards: {problems[0]}"
                                 f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; "
                                 f"rerun the same extract command with {VERIFY_HINT}")
        if not self.manifest["complete"]:
            n = len(self.manifest["not_extracted"])
            raise CacheError(f"{self.path}: {n} videos are not extracted yet (first: {self.manifest['not_extracted'][:3]}); "
                             "finish the extract run (all parts) before fitting")

    def verify_shards(self, keys: list[str] | None = None) -> None:
        """Re-hash the shards holding `keys` (None: every shard) against the manifest; a one-line CacheError
        naming the first damaged or missing one."""
        files = None if keys is None else {self._where[k][0] for k in keys if k in self._where}
        for s in self.manifest["shards"]:
            h5 = self.dir.shards / s["file"]
            if (files is None or s["file"] in files) and not (
                    h5.is_file() and h5.stat().st_size == s["bytes"] and file_sha256(h5) == s["sha256"]):
                raise CacheError(f"{h5}: {'content does not match its checksum (damaged)' if h5.is_file() else 'missing'}; "
                                 "rerun the same extract command with --verify to recompute it")

    def shard_files(self) -> list[Path]:
        return [self.dir.shards / s["file"] for s in self.manifest["shards"]]

    def decoders(self) -> dict[str, str]:
        """{codec: decoder} the extraction used (the most frequent per codec; empty for caches of 0.1)."""
        from collections import Counter

        counts: dict[str, Counter] = {}
        for s in self.manifest["shards"]:
            for codec, decoder in zip(s.get("codecs") or [], s.get("decoders") or []):
                counts.setdefault(codec, Counter())[decoder] += 1
        return {codec: c.most_common(1)[0][0] for codec, c in sorted(counts.items())}

    def read(self, key: str, names: tuple[str, ...] | None = None) -> VideoFeatures:
        """All arrays of one video, by id (only the HDF5 datasets `names`, e.g. ("S/pixels",), when given)."""
        import h5py

        if key not in self._where:
            raise KeyError(f"video {key!r} is not in cache {self.path}")
        file, i = self._where[key]
        with h5py.File(self.dir.shards / file, "r") as f:
            start, n = int(f["row_start"][i]), int(f["n_frames"][i])
            wanted = [d for d in _row_datasets(f) if names is None or d in names or d == "frame_index"]
            return VideoFeatures.from_flat(key, {name: f[name][start:start + n] for name in wanted})

    def read_shard(self, file: Path, parts: BranchFeatures = ALL_PARTS, branches: str = "".join(BRANCHES)) -> ShardArrays:
        """One shard in big contiguous reads, the parts selected in `parts` (non-None) of `branches`."""
        import h5py

        try:
            with h5py.File(file, "r") as f:
                keys = [k.decode() if isinstance(k, bytes) else k for k in f["keys"][:]]
                names = [n for b in branches for n in part_names(b, parts) if n in f]
                arrays = {n: f[n][:] for n in names + ["frame_index"] + (["D/crop_origin"] if "D/crop_origin" in f else [])}
                starts = f["row_start"][:]
        except OSError as exc:
            raise CacheError(f"{file}: unreadable shard ({exc}); run `diffvqa-cache cache verify` then "
                             "rerun the same extract command with --verify to recompute it") from None
        video = VideoFeatures.from_flat("", arrays)
        return ShardArrays(Path(file), keys, starts, video.frame_index, video.branches, video.crop_origin)

    def iter_videos(self) -> Iterator[VideoFeatures]:
        """Every video's arrays, shard by shard (one read per shard)."""
        for file in self.shard_files():
            shard = self.read_shard(file)
            for i in range(len(shard.keys)):
                yield shard.video(i)

    def part_shapes(self) -> dict[str, BranchFeatures]:
        """Per-frame shapes (K, C, h, w) of every part of each branch, read from the first shard."""
        flat = self._dataset_shapes()
        return {b: v for b in BRANCHES if (v := branch_from({n: tuple(s["shape"]) for n, s in flat.items()}, b))}

    def _dataset_shapes(self) -> dict[str, dict]:
        import h5py

        files = self.shard_files()
        if not files:
            return {}
        with h5py.File(files[0], "r") as f:
            return {n: {"shape": list(f[n].shape[1:]), "dtype": str(f[n].dtype)} for n in _row_datasets(f)}

    def info(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.path), "fingerprint": self.fingerprint,
            "extractor_version": self.config.extractor,
            "stale": self.config.stale_note(), "config": self.config.to_dict(), "videos": m["videos"],
            "failed": m["failed"], "missing": m["missing_on_disk"] + m["not_extracted"], "complete": m["complete"],
            "shards": len(m["shards"]), "shards_planned": m["n_shards_planned"], "features": self._dataset_shapes(),
            "bytes": sum(s["bytes"] for s in m["shards"]),
        }


def _row_datasets(f) -> list[str]:
    names = ["frame_index"]
    for b in BRANCHES:
        if b in f:
            names += [f"{b}/{n}" for n in f[b]]
    return names


def verify_cache(path: Path | str) -> tuple[list[str], int]:
    """Re-hash every shard against its record and the manifest. Returns (problems, shards checked)."""
    cache_dir = find_cache_dir(path)
    d = CacheDir(cache_dir)
    problems: list[str] = []
    try:
        manifest = json.loads((cache_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"manifest.json: unreadable ({exc})"], 0
    for s in manifest["shards"]:
        h5 = d.shards / s["file"]
        rec = d.record(s["shard"])
        if not h5.is_file():
            problems.append(f"{s['file']}: missing")
        elif rec is None:
            problems.append(f"{s['file']}: its record {h5.with_suffix('.json').name} is missing or unreadable")
        elif rec.get("sha256") != s["sha256"] or rec.get("videos") != s["videos"]:
            problems.append(f"{s['file']}: manifest and shard record disagree")
        elif h5.stat().st_size != s["bytes"] or file_sha256(h5) != s["sha256"]:
            problems.append(f"{s['file']}: content does not match its checksum (damaged)")
    return problems, len(manifest["shards"])


# ---------------------------------------------------------------- merging parts
def merge_caches(parts: list[Path | str], out: Path | str, move: bool = False) -> tuple[Path, dict]:
    """Gather the complete shards of job-array parts written to different folders into one cache.

    Each part is a cache directory (or an --out folder holding one) of the same settings; the result is
    OUT/<dataset>/<fingerprint> with every complete shard (copied, or moved with `move`), its record and
    a fresh manifest. Parts with different fingerprints are refused. Returns (cache dir, manifest).
    """
    import shutil

    dirs = [find_cache_dir(p) for p in parts]
    configs = [CacheConfig.load(d / "config.json") for d in dirs]
    fps = {c.fingerprint for c in configs}
    if len(fps) > 1:
        raise CacheError("parts have different fingerprints (extracted with other settings): "
                         + ", ".join(f"{d} ({c.fingerprint})" for d, c in zip(dirs, configs)))
    config = configs[0]
    target = Path(out) / config.dataset / config.fingerprint
    (target / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    dest = CacheDir(target)
    dest.remove_leftovers()
    for name in ("config.json", "labels.csv"):
        if not (target / name).is_file():
            shutil.copy2(dirs[0] / name, target / name)
    # the plan: listed videos in label order, minus those missing on disk, in shards of shard_size
    missing: list[str] = []
    for d in dirs:
        try:
            missing = json.loads((d / "manifest.json").read_text())["missing_on_disk"]
            break
        except (OSError, ValueError, KeyError):
            continue
    with open(dirs[0] / "labels.csv", newline="", encoding="utf-8") as f:
        gone = set(missing)
        keys = [row["key"] for row in csv.DictReader(f) if row["key"] not in gone]
    plan = plan_shards(keys, config.extract.shard_size)
    for d in dirs:
        if d.resolve() == target.resolve():
            continue
        src = CacheDir(d)
        for i, planned in enumerate(plan):
            if dest.is_complete(i, planned, config.fingerprint) or not src.is_complete(i, planned, config.fingerprint):
                continue
            for p in (src.shard_path(i), src.shard_path(i).with_suffix(".json")):  # record last: the completion mark
                with atomic_path(dest.shards / p.name) as tmp:
                    (shutil.move if move else shutil.copy2)(p, tmp)
    return target, dest.write_manifest(config, plan, missing)


def format_info(cache: FeatureCache) -> str:
    """What `cache info` prints: fingerprint, settings, the UNet chain, decoders, videos done, failed and
    missing, feature shapes."""
    info = cache.info()
    config, ex = cache.config, cache.config.extract
    ts = config.timesteps
    chain = (f"{len(ts)} UNet calls at t={', '.join(map(str, ts)) if len(ts) <= 6 else f'{ts[0]}, {ts[1]}, ..., {ts[-1]}'}"
             f"; F_MS and F_Latent ({ex.latent}) from the call at t={ts[-1]}"
             + ("" if ts[-1] == 0 else " (the authors' features are at t=0)") if ts else
             "timesteps not recorded (cache of 0.1)")
    decoders = ", ".join(f"{codec} by {dec}" for codec, dec in cache.decoders().items()) or "not recorded (cache of 0.1)"
    version = config.extractor + ("" if config.is_current else f" (this version extracts {EXTRACTOR_VERSION}: its "
                                  "features differ; re-extract before combining with new caches or predicting)")
    lines = [f"cache        {info['path']}\nfingerprint  {info['fingerprint']}\n"
             f"model        {ex.model} ({config.model_id}), controller {config.controller_id}\n"
             f"extractor    version {version}\n"
             f"settings     steps={ex.steps} sampler={ex.sampler} spacing={ex.timestep_spacing} strength={ex.strength} "
             f"latent={ex.latent} frames={ex.frames} fps={ex.fps} crops={ex.crops} grid={ex.grid} "
             f"ms_pool={ex.ms_pool} view={config.view_size} seed={ex.seed} noise={ex.noise} dtype={ex.dtype}\n"
             f"chain        {chain}\n"
             f"decoded      {decoders}\n"
             f"videos       {info['videos']} done, {len(info['failed'])} failed, {len(info['missing'])} missing; "
             f"{info['shards']}/{info['shards_planned']} shards, {info['bytes'] / 1e6:.1f} MB"]
    if info["stale"]:
        lines.append(f"stale        {info['stale']}; re-extract it with this version before scoring new videos")
    lines += [f"  {name:16s} {tuple(f['shape'])} {f['dtype']}" for name, f in info["features"].items()]
    lines += [f"  failed {f['video']}: {f['reason']}" for f in info["failed"][:10]]
    return "\n".join(lines)
