"""Protocols: which videos train and which test, on label layouts of the real datasets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from diffvqa_cache.errors import UserInputError
from diffvqa_cache.training.protocols import carve_validation, plan_splits, random_splits


class fake_cache:
    """What plan_splits reads of a FeatureCache: keys, labels' split column, dataset name, path."""

    def __init__(self, dataset: str, splits: list[str]):
        self.keys = [f"{dataset}{i}" for i in range(len(splits))]
        self.labels = {k: {"split": s, "mos": 1.0} for k, s in zip(self.keys, splits)}
        self.config, self.path = SimpleNamespace(dataset=dataset), f"/caches/{dataset}"

    def __len__(self):
        return len(self.keys)


LSVQ = fake_cache("lsvq", ["train"] * 6 + ["test"] * 3 + ["test1080p"] * 2)
KVD, LVQC = fake_cache("kvd", [""] * 12), fake_cache("lvqc", [""] * 5)


def test_cross_from_lsvq_trains_on_lsvq_train_only():
    protocol, [split] = plan_splits("cross", LSVQ, [KVD, LVQC])
    assert protocol == "cross" and split.train == LSVQ.keys[:6]
    assert split.test == {"kvd": KVD.keys, "lvqc": LVQC.keys}
    _, [every] = plan_splits("cross", LSVQ, [KVD], cross_train="all")
    assert every.train == LSVQ.keys


def test_lsvq_protocol_adds_test_caches_as_further_test_sets():
    protocol, [split] = plan_splits("auto", LSVQ, [KVD, fake_cache("kvd", [""] * 3)])
    assert protocol == "lsvq" and split.train == LSVQ.keys[:6]
    assert list(split.test) == ["test", "test1080p", "kvd", "kvd-2"] and len(split.test["kvd-2"]) == 3


def test_auto_and_refusals():
    assert plan_splits("auto", KVD, [LVQC])[0] == "cross"
    assert plan_splits("auto", KVD, [], n_splits=3)[0] == "random"
    with pytest.raises(UserInputError, match="cross or lsvq"):
        plan_splits("random", KVD, [LVQC])
    with pytest.raises(UserInputError, match="needs --test-cache"):
        plan_splits("cross", KVD, [])
    with pytest.raises(UserInputError, match="lsvq protocol needs"):
        plan_splits("lsvq", KVD, [])


def test_random_splits_and_validation_never_touch_the_test_part():
    keys = [f"v{i}" for i in range(40)]
    for split in random_splits(keys, 3, 0.25, seed=5):
        train, val = carve_validation(split.train, 0.2, seed=5)
        assert not (set(train) | set(val)) & set(split.test["test"]) and len(split.test["test"]) == 10
        assert sorted(train + val) == sorted(split.train)
