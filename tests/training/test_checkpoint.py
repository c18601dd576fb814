"""Self-describing regressor checkpoints: rebuilt from what they store, refusing other features."""

from __future__ import annotations

import pytest
import torch

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.errors import CacheError
from diffvqa_cache.training.checkpoint import load_checkpoint, read_meta, save_checkpoint
from diffvqa_cache.training.regressor import DiffVQARegressor, RegressorConfig

SPEC = {"ms_channels": [8, 8, 8, 8], "latent_channels": 4, "grid": 2, "pixel_size": 16, "num_frames": 2}
CFG = RegressorConfig(dff_channels=8, fff_dim=8, head_hidden=8, tcab_d_model=8, tcab_depth=1)


def batch():
    g = torch.Generator().manual_seed(0)
    view = BranchFeatures(latent=torch.randn(2, 2, 4, 2, 2, generator=g),
                          ms=tuple(torch.randn(2, 2, 8, 2, 2, generator=g) for _ in range(4)),
                          pixels=torch.randint(0, 256, (2, 2, 3, 16, 16), generator=g, dtype=torch.uint8))
    return {"S": view, "D": view}


def test_rebuilt_from_the_file_alone(tmp_path):
    torch.manual_seed(0)
    model = DiffVQARegressor(CFG, SPEC).eval()
    meta = {"regressor": CFG.to_dict(), "feature_spec": SPEC, "fingerprint": "a" * 16, "scale": [2.0, 1.0]}
    save_checkpoint(tmp_path / "m.safetensors", model, meta)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    loaded, got = load_checkpoint(tmp_path / "m.safetensors", "a" * 16)
    with torch.no_grad():
        assert torch.equal(model(batch())["score"], loaded(batch())["score"])
    assert got["scale"] == [2.0, 1.0] and got["format"] == read_meta(tmp_path / "m.safetensors")["format"]
    with pytest.raises(CacheError, match="trained on features aaaa"):
        load_checkpoint(tmp_path / "m.safetensors", "b" * 16)


def test_metadata_is_typed_and_keeps_what_it_does_not_know(tmp_path):
    from diffvqa_cache import __version__
    from diffvqa_cache.training.checkpoint import FORMAT, CheckpointMeta

    meta = CheckpointMeta(regressor=CFG.to_dict(), feature_spec=SPEC, fingerprint="a" * 16, split="split-02",
                          scale=[2.0, 1.0], history=[{"epoch": 0, "loss": 0.5}], extra={"note": "from a later version"})
    save_checkpoint(tmp_path / "m.safetensors", DiffVQARegressor(CFG, SPEC), meta)
    got = read_meta(tmp_path / "m.safetensors")
    assert isinstance(got, CheckpointMeta) and got == meta.replace(format=FORMAT, package_version=__version__)
    assert got.split == "split-02" and got["scale"] == [2.0, 1.0] and got.get("note") == "from a later version"
    assert got.get("resumed_after", "absent") is None and got.get("unknown", 7) == 7
