"""Tiny seeded regressor inputs so the whole folder runs in seconds on CPU."""

import pytest
import torch

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.training.regressor import RegressorConfig

TINY_SPEC = {"ms_channels": [32, 32, 16, 8], "latent_channels": 4, "grid": 4, "pixel_size": 32, "num_frames": 3}


def tiny_config(**overrides) -> RegressorConfig:
    sizes = dict(dff_channels=16, fff_dim=24, tcab_d_model=16, tcab_depth=1, tcab_patch=16, tcab_d_state=4,
                 head_hidden=16)
    sizes.update(overrides)
    return RegressorConfig(**sizes)


def make_view(batch=2, frames=3, spec=TINY_SPEC, seed=0) -> BranchFeatures:
    g = torch.Generator().manual_seed(seed)
    grid, size = spec["grid"], spec["pixel_size"]
    return BranchFeatures(
        latent=torch.randn(batch, frames, spec["latent_channels"], grid, grid, generator=g),
        ms=tuple(torch.randn(batch, frames, c, grid, grid, generator=g) for c in spec["ms_channels"]),
        pixels=torch.randint(0, 256, (batch, frames, 3, size, size), generator=g, dtype=torch.uint8),
    )


def make_batch(batch=2, frames=3, spec=TINY_SPEC) -> dict:
    return {"S": make_view(batch, frames, spec, seed=1), "D": make_view(batch, frames, spec, seed=2)}


def assert_grads(module: torch.nn.Module):
    """Every parameter received a finite gradient, and none is identically zero."""
    for name, param in module.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(param.grad).all(), f"non-finite gradient for {name}"
        assert param.grad.abs().sum() > 0, f"zero gradient for {name}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def spec() -> dict:
    return dict(TINY_SPEC)


@pytest.fixture
def config_factory():
    return tiny_config


@pytest.fixture
def batch_factory():
    return make_batch


@pytest.fixture
def view_factory():
    return make_view


@pytest.fixture
def check_grads():
    return assert_grads
