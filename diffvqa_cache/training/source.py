"""One way to read features: the interface both feature tables offer (`FeatureSource`) and the one place
that chooses between them for a memory budget and opens them (`open_features`).

A cache's selected features are loaded once into memory (`data.VideoTable`) when those of every cache
opened together, plus one shard while loading, fit the budget; else they are read from the shards batch
by batch (`stream.StreamedTable`), never holding more than the budget in read-ahead. Fit, sweep tasks and
cached scoring open their features here; training, prediction and the familiarity reference take either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.progress import bar
from diffvqa_cache.training.data import estimate_bytes, load_table, shard_read_bytes
from diffvqa_cache.training.settings import DATA_PATHS
from diffvqa_cache.training.rules import FeatureSpec, LoadSpec
from diffvqa_cache.training.stream import StreamedTable

DEVICE_SHARE = 0.5  # of the free GPU memory an in-memory table may take (the model trains in the rest)


@runtime_checkable
class FeatureSource(Protocol):
    """The videos of a cache as the training loop reads them: labels, and model batches on demand."""

    keys: list[str]
    mos: np.ndarray  # float32, one per video
    splits: list[str]  # the cache's official split of each video ("" when none)

    def __len__(self) -> int: ...

    @property
    def n_crops(self) -> dict[str, int]:
        """Crops per frame of each branch."""

    def subset(self, idx: np.ndarray) -> "FeatureSource":
        """The videos `idx` (a split), sharing this source's data."""

    def batch(self, idx: np.ndarray, crop: int | np.ndarray, device: torch.device) -> dict[str, BranchFeatures]:
        """Model input for videos `idx`, one crop per (video, frame); features float32 on `device`."""

    def batches(self, plan: Iterable[tuple[np.ndarray, int | np.ndarray]],
                device) -> Iterator[dict[str, BranchFeatures]]:
        """`batch(idx, crop, device)` for each (idx, crop) of `plan`, in order."""

    def feature_spec(self) -> FeatureSpec:
        """What the regressor is built for."""


def choose_data_path(caches: list[FeatureCache], spec: LoadSpec, data: str, budget_bytes: int) -> tuple[str, int]:
    """("memory" or "stream", bytes the in-memory path needs) for the feature tables of `caches`: memory
    when `data` is "memory", or "auto" and the tables (plus one shard while loading) fit `budget_bytes`."""
    need = sum(estimate_bytes(c, spec) for c in caches) + max(shard_read_bytes(c, spec) for c in caches)
    if data == "memory" and need > budget_bytes:
        raise UserInputError(f"the selected features need {need / 1e9:.2f} GB in memory, over the budget "
                             f"memory_gb={budget_bytes / 1e9:.2f}; use --set data=auto (streams them) or raise memory_gb")
    if data == "auto":
        data = "memory" if need <= budget_bytes else "stream"
    return data, need


@dataclass(frozen=True)
class DataPlan:
    """How a set of caches' features are held: the data path chosen, what memory would need, the budget."""

    path: str  # "memory" or "stream"
    need_bytes: int  # the in-memory tables plus one shard while loading
    budget_gb: float  # the feature budget (memory_gb, or its default)

    @property
    def budget_bytes(self) -> int:
        return _bytes(self.budget_gb)

    def record(self) -> dict:
        """The data path's record (a run's config.json "data", a sweep task's result)."""
        return {"path": self.path, "budget_gb": self.budget_gb, "need_gb": round(self.need_bytes / 1e9, 3)}


def plan_features(caches: list[FeatureCache], spec: LoadSpec, data: str, budget_gb: float) -> DataPlan:
    """The data path for `spec`'s features of `caches` under `data` ("auto", "memory", "stream") and a
    budget of `budget_gb`; `UserInputError` when "memory" is asked for and they do not fit."""
    if data not in DATA_PATHS:
        raise UserInputError(f"data must be one of {DATA_PATHS}, got {data!r}")
    path, need = choose_data_path(caches, spec, data, _bytes(budget_gb))
    return DataPlan(path, need, budget_gb)


def _bytes(gb: float) -> int:
    """A budget in GB as the byte count the tables are compared against (the one conversion)."""
    return int(gb * 1e9)


def open_source(cache: FeatureCache, spec: LoadSpec, plan: DataPlan, device=None, progress=None) -> FeatureSource:
    """One cache's features on `plan`'s path: a `VideoTable` (moved onto a CUDA `device` when it takes at
    most DEVICE_SHARE of the free GPU memory; `progress()` after each shard read) or a `StreamedTable`."""
    if plan.path == "stream":
        return StreamedTable(cache, spec, plan.budget_bytes)
    table = load_table(cache, spec, progress)
    if device is not None and torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if table.nbytes() <= DEVICE_SHARE * free:
            table = table.to(device)
    return table


@dataclass
class OpenedFeatures:
    """The features of caches opened together: one source per cache, in order, and the plan they follow."""

    plan: DataPlan
    sources: list[FeatureSource]

    def record(self) -> dict:
        """The plan's record and where the features live ("cpu (streamed)", or the table's device)."""
        first = self.sources[0]
        return {**self.plan.record(),
                "device": str(first.device) if self.plan.path == "memory" else "cpu (streamed)"}


def open_features(caches: list[FeatureCache], spec: LoadSpec, data: str, budget_gb: float, device=None,
                  progress: bool = False) -> OpenedFeatures:
    """`spec`'s features of every cache of `caches`, all in memory or all streamed (`plan_features`: one
    budget for them together), each table moved onto `device` where it fits there. `progress`: a bar
    while the first cache loads into memory."""
    plan = plan_features(caches, spec, data, budget_gb)
    first, *rest = caches
    with bar("load cache", len(first.shard_files()), progress and plan.path == "memory") as pb:
        sources = [open_source(first, spec, plan, device, progress=lambda: pb.update(advance=1))]
    sources += [open_source(c, spec, plan, device) for c in rest]
    return OpenedFeatures(plan, sources)
