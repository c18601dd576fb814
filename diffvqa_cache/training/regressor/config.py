"""Configuration of the DiffVQA stage-2 regressor (DFF -> TDM -> FFF, TCAB, head).

Paper fixes: the structure (DFF with channel+spatial attention, TDM, FFF, a Mamba-based TCAB per branch,
a weight MLP on the S branch and a quality MLP on the D branch). Our choice: every size below and the
switches used for ablations. All defaults are deliberately small.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffvqa_cache.config import Config
from diffvqa_cache.errors import UserInputError

_BRANCHES = ("S", "D", "SD")


@dataclass
class RegressorConfig(Config):
    branches: str = "SD"  # which cached views feed the head: "S", "D" or both ("SD": S weights, D quality)
    use_tcab: bool = True  # Mamba temporal-coherence block over view pixels
    use_tdm: bool = True  # temporal difference module (doubles the per-frame channels when on)
    use_attention: bool = True  # DFF channel + spatial (CBAM) attention
    ms_levels: tuple[int, ...] = (0, 1, 2, 3)  # which F_MS (UNet up-block) levels enter DFF
    use_latent: bool = True  # concat the reconstructed latent F_Latent in DFF
    dff_channels: int = 64  # width after the DFF "dimension adjustment" (1x1 conv per level)
    fff_dim: int = 128  # per-frame feature size out of FFF
    tcab_d_model: int = 96
    tcab_depth: int = 2  # number of bidirectional Mamba blocks
    tcab_patch: int = 16  # patch-embedding kernel = stride, in view pixels
    tcab_d_state: int = 16
    head_hidden: int = 128
    dropout: float = 0.1  # in the head MLPs only

    def __post_init__(self):
        self.ms_levels = tuple(int(level) for level in self.ms_levels)
        if self.branches not in _BRANCHES:
            raise UserInputError(f"branches must be one of {_BRANCHES}, got {self.branches!r}")
        if not self.ms_levels and not self.use_latent:
            raise UserInputError("ms_levels is empty and use_latent is False: DFF would have no input")
        if len(set(self.ms_levels)) != len(self.ms_levels) or any(level < 0 for level in self.ms_levels):
            raise UserInputError(f"ms_levels must be distinct non-negative indices, got {self.ms_levels}")
        for name in ("dff_channels", "fff_dim", "tcab_d_model", "tcab_depth", "tcab_patch", "tcab_d_state",
                     "head_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserInputError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserInputError(f"dropout must be in [0, 1), got {self.dropout!r}")
