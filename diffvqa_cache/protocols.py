"""Evaluation protocols: which videos train and which test, for every split of a fit.

`random`: repeated random splits by video (frames of one video never on both sides), seeded;
`lsvq`: the official split (train -> test and test1080p); `cross`: all of one cache -> all of another.
A validation set for early stopping is carved out of a split's train part, never out of its test part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Config
from .errors import UserInputError

PROTOCOLS = ("auto", "random", "lsvq", "cross")


@dataclass(frozen=True)
class Split(Config):
    """One split: its name, the training videos and one or more named test sets (keys)."""

    name: str
    train: list[str]
    test: dict[str, list[str]]


def random_splits(keys: list[str], n_splits: int, test_fraction: float, seed: int) -> list[Split]:
    """Repeated random splits by video: each video is in exactly one side of each split."""
    out = []
    for i in range(n_splits):
        perm = np.random.default_rng([seed, i]).permutation(len(keys))
        n_test = max(1, round(test_fraction * len(keys)))
        out.append(Split(f"split-{i:02d}", sorted(keys[j] for j in perm[n_test:]),
                         {"test": sorted(keys[j] for j in perm[:n_test])}))
    return out


def carve_validation(train_keys: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) keys: a seeded `fraction` of the training videos held out (at least 3)."""
    if fraction <= 0:
        return train_keys, []
    perm = np.random.default_rng([seed, 10_000]).permutation(len(train_keys))
    n_val = max(3, round(fraction * len(train_keys)))
    return sorted(train_keys[j] for j in perm[n_val:]), sorted(train_keys[j] for j in perm[:n_val])


def plan_splits(protocol: str, cache, test_cache=None, n_splits: int = 10, test_fraction: float = 0.2,
                seed: int = 0) -> tuple[str, list[Split]]:
    """The protocol actually used ("auto" resolved) and its splits over `cache` (a FeatureCache)."""
    splits_present = {cache.labels[k]["split"] for k in cache.keys}
    if protocol == "auto":
        protocol = "cross" if test_cache is not None else ("lsvq" if "test" in splits_present else "random")
    if protocol == "cross":
        if test_cache is None:
            raise UserInputError("protocol cross needs --test-cache")
        return protocol, [Split("cross", list(cache.keys), {test_cache.config.dataset: list(test_cache.keys)})]
    if protocol == "lsvq":
        by = {s: [k for k in cache.keys if cache.labels[k]["split"] == s] for s in ("train", "test", "test1080p")}
        if not by["train"] or not by["test"]:
            raise UserInputError(f"{cache.path}: the lsvq protocol needs train and test videos in labels.csv's split "
                                 f"column (found {sorted(splits_present)}); use --protocol random")
        return protocol, [Split("lsvq", by["train"], {s: by[s] for s in ("test", "test1080p") if by[s]})]
    if len(cache) < 10:
        raise UserInputError(f"{cache.path}: only {len(cache)} videos, too few for random {test_fraction:.0%} test splits")
    return "random", random_splits(list(cache.keys), n_splits, test_fraction, seed)
