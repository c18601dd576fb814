"""DiffVQARegressor: the stage-2 model trained on the feature cache (never imports diffusers).

Paper fixes: per branch (S = structure view, D = detail view) DFF -> TDM -> FFF and a parallel TCAB; the
head weights frames from S and rates frames from D. Our choices: which branches/parts exist is set by
`RegressorConfig` (only enabled modules are built); the model also stores `feature_spec` (what the cache
provides: ms_channels, latent_channels, grid, pixel_size, num_frames), which together with the config is
all that is needed to rebuild it from a checkpoint. `forward_features` / `forward_head` are the seam
between the per-branch backbone and the head (timm style).

Batch layout: batch[branch] = BranchFeatures(latent (B,T,4,g,g), ms (L x (B,T,C_l,g_l,g_l) or None),
pixels (B,T,3,P,P) uint8); DFF brings every level to the grid `g`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.training.regressor.config import RegressorConfig
from diffvqa_cache.training.regressor.dff import DFF
from diffvqa_cache.training.regressor.fff import FFF
from diffvqa_cache.training.regressor.head import Head
from diffvqa_cache.training.regressor.tcab import TCAB
from diffvqa_cache.training.regressor.tdm import TDM

_SPEC_KEYS = ("ms_channels", "latent_channels", "grid", "pixel_size", "num_frames")


class BranchEncoder(nn.Module):
    """One view's backbone: DFF -> TDM -> FFF, and TCAB in parallel. -> (B, T, feature_dim)."""

    def __init__(self, config: RegressorConfig, spec: dict):
        super().__init__()
        self.dff = DFF(spec["ms_channels"], config.ms_levels, spec["latent_channels"], spec["grid"],
                       channels=config.dff_channels, use_latent=config.use_latent,
                       use_attention=config.use_attention, latent_grid=spec.get("latent_grid"))
        self.tdm = TDM(enabled=config.use_tdm)
        self.fff = FFF(self.tdm.out_channels(config.dff_channels), conv_channels=config.dff_channels,
                       dim=config.fff_dim)
        self.tcab = (TCAB(spec["pixel_size"], spec["num_frames"], d_model=config.tcab_d_model,
                          depth=config.tcab_depth, patch=config.tcab_patch, d_state=config.tcab_d_state)
                     if config.use_tcab else None)
        self.feature_dim = config.fff_dim + (config.tcab_d_model if config.use_tcab else 0)

    def forward(self, view: BranchFeatures) -> torch.Tensor:
        # 1. DFF -> TDM -> FFF on the diffusion features
        features = self.fff(self.tdm(self.dff(view.latent, view.ms)))
        # 2. TCAB on the view pixels, concatenated per frame
        if self.tcab is not None:
            features = torch.cat([features, self.tcab(view.pixels)], dim=-1)
        return features


class DiffVQARegressor(nn.Module):
    def __init__(self, config: RegressorConfig, feature_spec: dict):
        super().__init__()
        missing = [key for key in _SPEC_KEYS if key not in feature_spec]
        if missing:
            raise UserInputError(f"feature_spec lacks {missing}; got keys {sorted(feature_spec)}")
        if config.ms_levels and max(config.ms_levels) >= len(feature_spec["ms_channels"]):
            raise UserInputError(f"ms_levels {config.ms_levels} out of range for the cache's "
                                 f"{len(feature_spec['ms_channels'])} F_MS levels")
        self.config = config
        self.feature_spec = {key: (list(value) if isinstance(value, (list, tuple)) else value)
                             for key, value in feature_spec.items()}
        self.branches = nn.ModuleDict({name: BranchEncoder(config, self.feature_spec) for name in config.branches})
        quality_branch = "D" if "D" in config.branches else "S"
        self.head = Head(self.branches[quality_branch].feature_dim,
                         self.branches["S"].feature_dim if config.branches == "SD" else None,
                         hidden=config.head_hidden, dropout=config.dropout)

    def forward_features(self, batch: dict[str, BranchFeatures]) -> dict[str, torch.Tensor]:
        """Per-branch per-frame features {branch: (B, T, feature_dim)} (concat of F_FFF and F_TCAB)."""
        return {name: encoder(batch[name]) for name, encoder in self.branches.items()}

    def forward_head(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Frame weights from S (when both branches are used), frame quality from D (or the only branch)."""
        if self.config.branches == "SD":
            return self.head(features["D"], features["S"])
        return self.head(features[self.config.branches])

    def forward(self, batch: dict[str, BranchFeatures]) -> dict[str, torch.Tensor]:
        # 1. per-branch backbone (DFF -> TDM -> FFF, TCAB)
        features = self.forward_features(batch)
        # 2. head: score (B,), frame_quality (B, T), frame_weight (B, T)
        return self.forward_head(features)
