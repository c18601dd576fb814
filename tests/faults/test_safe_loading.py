"""Safe loading: no pickle anywhere; caches and checkpoints of another format version are refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.errors import CacheError
from diffvqa_cache.files import write_json_atomic
from diffvqa_cache.training.checkpoint import load_checkpoint, save_checkpoint
from diffvqa_cache.training.regressor import DiffVQARegressor, RegressorConfig

ROOT = Path(__file__).resolve().parents[2]


def test_no_unsafe_loaders_in_the_code():
    pattern = re.compile(r"torch\.load\(|pickle\.loads?\(|yaml\.load\(|allow_pickle=True")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for folder in ("diffvqa_cache", "pipelines") for p in (ROOT / folder).rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    offenders += [f"cli.py:{i}" for i, line in enumerate((ROOT / "cli.py").read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_cache_of_another_format_version_is_refused(sample_cache, tmp_path):
    cache_dir = tmp_path / "cache"
    shutil.copytree(sample_cache(limit=2).cache_dir, cache_dir)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    write_json_atomic(cache_dir / "manifest.json", {**manifest, "format_version": 99})
    with pytest.raises(CacheError, match="cache format 99"):
        FeatureCache(cache_dir)


def test_checkpoint_of_another_format_is_refused(tmp_path):
    spec = {"ms_channels": [8, 8, 8, 8], "latent_channels": 4, "grid": 2, "pixel_size": 16, "num_frames": 2}
    cfg = RegressorConfig(use_tcab=False, dff_channels=8, fff_dim=8, head_hidden=8)
    model = DiffVQARegressor(cfg, spec)
    meta = {"regressor": cfg.to_dict(), "feature_spec": spec, "fingerprint": "f" * 16}
    save_checkpoint(tmp_path / "m.safetensors", model, meta)
    loaded, _ = load_checkpoint(tmp_path / "m.safetensors", "f" * 16)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"diffvqa": json.dumps({**meta, "format": "diffvqa-regressor-0"})})
    with pytest.raises(CacheError, match="checkpoint format"):
        load_checkpoint(tmp_path / "old.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CacheError, match="not a readable regressor checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors")
