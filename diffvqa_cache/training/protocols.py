"""Evaluation protocols: which videos train and which test, for every split of a fit.

`random`: repeated random splits by video (frames of one video never on both sides), seeded;
`lsvq`: the official split (train -> test and test1080p, plus every --test-cache as a further test set);
`cross`: one cache -> each of the others (a cache with an official split trains on its train part only,
so LSVQ -> KoNViD-1k never sees LSVQ's test videos). A validation set for early stopping is carved out
of a split's train part, never out of its test part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from diffvqa_cache.config import Config
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.training.metrics import MIN_VIDEOS

PROTOCOLS = ("auto", "random", "lsvq", "cross")
CROSS_TRAIN = ("train", "all")  # cross protocol: the training cache's official train part, or every video


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


def test_set_names(caches: list, taken: tuple[str, ...] = ()) -> list[str]:
    """One unique test-set name per test cache: its dataset name (suffixed -2, -3 ... when repeated)."""
    names: list[str] = []
    for cache in caches:
        name, n = cache.config.dataset, 1
        while name in names or name in taken:
            n += 1
            name = f"{cache.config.dataset}-{n}"
        names.append(name)
    return names


def plan_splits(protocol: str, cache, test_caches: list = (), n_splits: int = 10, test_fraction: float = 0.2,
                seed: int = 0, cross_train: str = "train") -> tuple[str, list[Split]]:
    """The protocol actually used ("auto" resolved) and its splits over `cache` (a FeatureCache); each
    of `test_caches` is a test set of its own, named by `test_set_names`.

    auto: lsvq when the cache has an official split (the test caches join as further test sets), cross
    when test caches are given, else random."""
    by = {s: [k for k in cache.keys if cache.labels[k]["split"] == s] for s in ("train", "test", "test1080p")}
    official = bool(by["train"] and by["test"])
    if protocol == "auto":
        protocol = "lsvq" if official else ("cross" if test_caches else "random")
    extra = dict(zip(test_set_names(list(test_caches), ("test", "test1080p")), (list(c.keys) for c in test_caches)))
    if protocol == "cross":
        if not test_caches:
            raise UserInputError("protocol cross needs --test-cache")
        train = by["train"] if official and cross_train == "train" else list(cache.keys)
        return protocol, [Split("cross", train, extra)]
    if protocol == "lsvq":
        if not official:
            found = sorted({cache.labels[k]["split"] for k in cache.keys})
            raise UserInputError(f"{cache.path}: the lsvq protocol needs train and test videos in labels.csv's split "
                                 f"column (found {found}); use --protocol random")
        return protocol, [Split("lsvq", by["train"], {**{s: by[s] for s in ("test", "test1080p") if by[s]}, **extra})]
    if test_caches:
        raise UserInputError("--test-cache goes with --protocol cross or lsvq, not random splits")
    if len(cache) < 10:
        raise UserInputError(f"{cache.path}: only {len(cache)} videos, too few for random {test_fraction:.0%} test splits")
    return "random", random_splits(list(cache.keys), n_splits, test_fraction, seed)


def check_plan(protocol: str, splits: list[Split], cache_path, test_fraction: float, val_fraction: float,
               test_cache_paths: dict[str, str] | None = None) -> None:
    """Refuse, before any training, a plan whose splits cannot all be trained and scored: every test set
    needs `MIN_VIDEOS` videos (the metrics), and every split's training part, once its validation set is
    carved out, as many (training, the score scale, the familiarity reference). The message names the
    setting that fixes it."""
    test_cache_paths = test_cache_paths or {}
    for split in splits:
        for name, keys in split.test.items():
            if len(keys) >= MIN_VIDEOS:
                continue
            short = f"{len(keys)} video(s), and metrics need at least {MIN_VIDEOS}"
            if name in test_cache_paths:
                raise UserInputError(f"--test-cache {test_cache_paths[name]}: {short}; leave it out or extract more "
                                     "videos into it")
            if protocol == "random":
                n = len(split.train) + len(keys)
                raise UserInputError(
                    f"{cache_path}: {n} videos with test_fraction {test_fraction:g} leave {len(keys)} test video(s) "
                    f"per split, and metrics need at least {MIN_VIDEOS}: use --set test_fraction="
                    f"{math.ceil(100 * MIN_VIDEOS / n) / 100:g} or more, or a cache with more videos")
            raise UserInputError(f"{cache_path}: the official split's {name} set has {short}; use --protocol random "
                                 "(or --protocol cross with --test-cache)")
        train, val = carve_validation(split.train, val_fraction, 0)
        if len(train) < MIN_VIDEOS:
            carved = f", {len(val)} of them carved out for validation (train.val_fraction {val_fraction:g})," \
                if val else ""
            fix = "--set train.val_fraction=0" if val else "a cache with more videos"
            if protocol == "random":
                fix += f" or a smaller test_fraction (now {test_fraction:g})"
            raise UserInputError(f"{cache_path}: split {split.name} has {len(split.train)} training video(s){carved} "
                                 f"and training needs at least {MIN_VIDEOS}: use {fix}")
