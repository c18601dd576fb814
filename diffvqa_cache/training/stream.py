"""Stage two's streamed data path: batches read from the shards when they are needed, for caches whose
selected features do not fit the memory budget.

`StreamedTable` offers what the training loop uses of `data.VideoTable` (the `source.FeatureSource`
interface: keys, mos, n_crops, subset, batch, batches, feature_spec), so `train`, `predict_raw` and
`fit_split` run unchanged on either. A batch reads only the rows it uses (the chosen frames and, per frame,
the chosen crop) with positional reads at the file offsets of the uncompressed, contiguous HDF5 datasets,
then applies the shared per-video rules (`rules`: frames picked, maps pooled, pixels resized) to the whole
batch: the same tensors as the in-memory path.
`batches` reads ahead of the model in a few threads and never holds more than the budget in read-ahead.

Positional reads rather than memory maps: mapped file pages count in the process's resident memory
(a streamed fit would look as large as its cache), and one map per shard and dataset would need
thousands of open files; `os.preadv` fills the batch buffer directly and leaves caching to the kernel.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.cache.folder import (
    FeatureCache,
    PartLayout,
    ShardLayout,
    branch_from,
    nonfinite_error,
    nonfinite_rows,
    part_names,
    shard_layout,
)
from diffvqa_cache.errors import CacheError
from diffvqa_cache.training.rules import (
    FeatureSpec,
    LoadSpec,
    apply_load_rules,
    feature_spec,
    has_moments,
    pick_frames,
    resolve_grid_and_frames,
    table_labels,
    to_device,
)

READ_THREADS = 2  # enough: a batch's reads are announced at once; more threads only contend with the model
MAX_AHEAD = 3  # batches read ahead at most (and at most the budget's bytes)
ANNOUNCE_BYTES = 1 << 30  # reads announced to the kernel beyond those (page cache, not this process's memory)


@dataclass
class _Shards:
    """What every subset of one streamed cache shares: shard layouts and the load rules."""

    layouts: list[ShardLayout]
    spec: LoadSpec
    grid: int
    num_frames: int
    names: dict[str, list[str]]  # branch -> HDF5 datasets to read
    shapes: dict[str, PartLayout]  # dataset -> layout in the first shard (row shape and dtype)
    checked: set  # videos whose features were found finite
    features: FeatureSpec  # what the regressor is built for
    moments: bool = False  # F_MS hold cell means then stds (--ms-pool mean+std)

    def raw_video_bytes(self) -> int:
        """Bytes one video's rows take when read (one crop per frame)."""
        return sum(p.block_bytes for p in self.shapes.values()) * self.num_frames

    def video_bytes(self) -> int:
        """Upper bound of the bytes one video takes in a read-ahead batch (raw rows and their pooled copy)."""
        return 2 * self.raw_video_bytes()


def _open_shards(cache: FeatureCache, spec: LoadSpec) -> _Shards:
    grid, num_frames = resolve_grid_and_frames(cache, spec)
    names = {b: part_names(b, spec.parts()) for b in spec.branches}
    flat = [n for b in spec.branches for n in names[b]]
    layouts = [shard_layout(f, flat) for f in cache.shard_files()]
    if not layouts:
        raise CacheError(f"{cache.path}: no shards to read; rerun extract")
    shapes = layouts[0].parts
    for lay in layouts[1:]:
        odd = [n for n in flat if (lay.parts[n].row_shape, lay.parts[n].dtype) != (shapes[n].row_shape, shapes[n].dtype)]
        if odd:
            raise CacheError(f"{lay.file}: {odd[0]} has shape {lay.parts[odd[0]].row_shape}, the first shard "
                             f"{shapes[odd[0]].row_shape}; the cache mixes settings, re-extract it")
    return _Shards(layouts, spec, grid, num_frames, names, shapes, set(), feature_spec(cache, spec),
                   has_moments(cache))


class StreamedTable:
    """The videos of a cache, read batch by batch from its shards (see the module docstring)."""

    def __init__(self, cache: FeatureCache, spec: LoadSpec, budget_bytes: int):
        keys, mos, splits = table_labels(cache)
        src = _open_shards(cache, spec)
        where = {k: (s, i) for s, lay in enumerate(src.layouts) for i, k in enumerate(lay.keys)}
        loc = np.array([where[k] for k in keys], dtype=np.int64).reshape(len(keys), 2)
        self._init(keys, mos, splits, loc, src, budget_bytes)

    def _init(self, keys, mos, splits, loc, src, budget_bytes):
        self.keys, self.mos, self.splits = keys, mos.astype(np.float32), splits
        self._loc, self._src, self.budget_bytes = loc, src, int(budget_bytes)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def n_crops(self) -> dict[str, int]:
        return {b: self._src.shapes[names[0]].row_shape[0] for b, names in self._src.names.items()}

    def subset(self, idx: np.ndarray) -> "StreamedTable":
        out = object.__new__(StreamedTable)
        out._init([self.keys[i] for i in idx], self.mos[idx], [self.splits[i] for i in idx], self._loc[idx],
                  self._src, self.budget_bytes)
        return out

    def feature_spec(self) -> FeatureSpec:
        """As `VideoTable.feature_spec` (`rules.feature_spec`: from the cached shapes, no data read)."""
        return self._src.features

    def batch(self, idx: np.ndarray, crop: int | np.ndarray, device: torch.device) -> dict[str, BranchFeatures]:
        """As `VideoTable.batch`, read now."""
        device = torch.device(device)
        pin = device.type == "cuda"
        reads = self._reads(idx, crop)
        self._announce(reads)
        return to_device(self._read(reads, idx, self._buffers(len(idx), pin), pin), device)

    def batches(self, plan: Iterable[tuple[np.ndarray, int | np.ndarray]], device) -> Iterator[dict[str, BranchFeatures]]:
        """`batch(idx, crop, device)` for each (idx, crop) of `plan`, in order. Reader threads work ahead on
        as many batches as fit the budget (at least the next one, at most MAX_AHEAD), and the kernel is
        asked to fetch the reads of the batches after them (up to ANNOUNCE_BYTES of page cache)."""
        device = torch.device(device)
        pin = device.type == "cuda"
        plan = list(plan)
        per_video, raw_video = self._src.video_bytes(), self._src.raw_video_bytes()
        reads: dict[int, list] = {}  # plan position -> its reads, once announced
        pending: deque = deque()  # (future, bytes) in plan order
        held = submitted = consumed = 0
        pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="stream-read")
        try:
            while consumed < len(plan):
                while submitted < len(plan) and len(pending) < MAX_AHEAD:
                    cost = len(plan[submitted][0]) * per_video
                    if pending and held + cost > self.budget_bytes:
                        break
                    idx, crop = plan[submitted]
                    if submitted not in reads:
                        reads[submitted] = self._reads(idx, crop)
                        self._announce(reads[submitted])
                    # Buffers come from this thread, so freed ones are reused here instead of piling up
                    # in the allocator arenas of the reader threads.
                    pending.append((pool.submit(self._read, reads.pop(submitted), idx, self._buffers(len(idx), pin),
                                                pin), cost))
                    held += cost
                    submitted += 1
                ahead = submitted + len(reads)
                while ahead < len(plan) and sum(len(plan[i][0]) for i in reads) * raw_video < ANNOUNCE_BYTES:
                    reads[ahead] = self._reads(*plan[ahead])
                    self._announce(reads[ahead])
                    ahead += 1
                fut, cost = pending.popleft()
                host = fut.result()
                held -= cost
                consumed += 1
                yield to_device(host, device)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # nothing reads into a buffer after the caller moved on

    # ------------------------------------------------------------ reading one batch
    def _buffers(self, n: int, pin: bool) -> dict[str, torch.Tensor]:
        """Empty (n, T, ...) tensors for the raw rows of each dataset; page-locked (`pin`) for non-blocking
        copies to CUDA, allocated as tensors so that torch tracks those copies before reusing the memory."""
        t = self._src.num_frames
        return {name: torch.empty((n, t, *p.row_shape[1:]), dtype=torch.from_numpy(np.empty(0, p.dtype)).dtype,
                                  pin_memory=pin) for name, p in self._src.shapes.items()}

    def _reads(self, idx: np.ndarray, crop) -> list[tuple[int, int, str, int, int, int]]:
        """A batch's reads: (shard, video j, dataset, first and end frame position, file position) for each
        run of consecutive (row, crop) blocks of the frames picked and the crop of each frame."""
        src = self._src
        crops = np.broadcast_to(crop, (len(idx), src.num_frames))
        out = []
        for j, v in enumerate(idx):
            shard, i = self._loc[v]
            lay = src.layouts[shard]
            rows = pick_frames(int(lay.n_frames[i]), src.num_frames) + lay.row_start[i]
            for name, part in lay.parts.items():
                k = part.row_shape[0]
                blocks = rows * k + (crops[j] % k if k > 1 else 0)
                cut = np.flatnonzero(np.diff(blocks) != 1) + 1
                out += [(int(shard), j, name, int(a), int(b), part.offset + int(blocks[a]) * part.block_bytes)
                        for a, b in zip(np.concatenate([[0], cut]), np.concatenate([cut, [len(blocks)]]))]
        return out

    @contextlib.contextmanager
    def _opened(self, reads: list) -> Iterator[dict[int, int]]:
        fds: dict[int, int] = {}
        try:
            for shard in {r[0] for r in reads}:
                fds[shard] = os.open(self._src.layouts[shard].file, os.O_RDONLY)
            yield fds
        finally:
            for fd in fds.values():
                os.close(fd)

    def _announce(self, reads: list) -> None:
        """Ask the kernel to start fetching `reads` now (POSIX_FADV_WILLNEED): a cold disk then serves a
        batch's scattered reads, and those of the next batches, in parallel."""
        with self._opened(reads) as fds:
            for shard, _, name, a, b, pos in reads:
                os.posix_fadvise(fds[shard], pos, (b - a) * self._src.shapes[name].block_bytes, os.POSIX_FADV_WILLNEED)

    def _read(self, reads: list, idx: np.ndarray, buffers: dict[str, torch.Tensor],
              pin: bool) -> dict[str, BranchFeatures]:
        """Fill `buffers` with a batch's `reads`, then check, pool and resize as the in-memory table does."""
        src = self._src
        raw = {name: t.numpy() for name, t in buffers.items()}  # views: the reads land in the tensors
        with self._opened(reads) as fds:
            for shard, j, name, a, b, pos in reads:
                size = src.shapes[name].block_bytes
                _pread_into(fds[shard], memoryview(raw[name][j]).cast("B")[a * size:b * size], pos,
                            src.layouts[shard].file)
        for j, v in enumerate(idx):
            self._check_finite(self.keys[v], {name: a[j] for name, a in raw.items()}, src.layouts[self._loc[v][0]].file)
        out = {}
        for b in src.spec.branches:
            view = apply_load_rules(branch_from({name: buffers[name] for name in src.names[b]}, b), src.spec, src.grid,
                                    src.moments)
            out[b] = view.map(lambda x: x.pin_memory() if pin and not x.is_pinned() else x)
        return out

    def _check_finite(self, key: str, arrays: dict[str, np.ndarray], file) -> None:
        """The in-memory path checks every loaded shard; here each video is checked the first time it is read."""
        if key in self._src.checked:
            return
        for name, a in arrays.items():
            if a.dtype.kind == "f" and nonfinite_rows(a).any():
                raise nonfinite_error(file, key, name)
        self._src.checked.add(key)


def _pread_into(fd: int, dest: memoryview, pos: int, file) -> None:
    done = 0
    while done < len(dest):
        got = os.preadv(fd, [dest[done:]], pos + done)
        if got <= 0:
            raise CacheError(f"{file}: shorter than its layout says (truncated?); run `diffvqa-cache cache verify`")
        done += got
