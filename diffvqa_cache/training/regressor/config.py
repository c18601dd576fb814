"""Configuration of the DiffVQA stage-2 regressor (DFF -> TDM -> FFF, TCAB, head).

Paper fixes: the structure (DFF with channel+spatial attention, TDM, FFF, a Mamba-based TCAB per branch,
a weight MLP on the S branch and a quality MLP on the D branch). Our choice: every size below and the
switches used for ablations. All defaults are deliberately small.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffvqa_cache.config import Config, setting
from diffvqa_cache.errors import UserInputError

_BRANCHES = ("S", "D", "SD")


@dataclass
class RegressorConfig(Config):
    """The regressor's structure and sizes (`fit`'s `regressor.*` settings)."""

    branches: str = setting("SD", "Cached views feeding the head: S, D or SD (S weights, D quality).")
    use_tcab: bool = setting(True, "Mamba temporal-coherence block (TCAB) over the view pixels.")
    use_tdm: bool = setting(True, "Temporal difference module (doubles the per-frame channels).")
    use_attention: bool = setting(True, "DFF channel + spatial (CBAM) attention.")
    ms_levels: tuple[int, ...] = setting((0, 1, 2, 3), "F_MS (UNet up-block) levels entering DFF "
                                                       "(--set ms_levels=[0,2]).")
    use_latent: bool = setting(True, "Concatenate the reconstructed latent F_Latent in DFF.")
    dff_channels: int = setting(64, "Width after DFF's dimension adjustment (a 1x1 conv per level).")
    fff_dim: int = setting(128, "Per-frame feature size out of FFF.")
    tcab_d_model: int = setting(96, "TCAB model width.")
    tcab_depth: int = setting(2, "Bidirectional Mamba blocks in TCAB.")
    tcab_patch: int = setting(16, "TCAB patch-embedding kernel = stride, in view pixels.")
    tcab_d_state: int = setting(16, "TCAB Mamba state size.")
    head_hidden: int = setting(128, "Hidden width of the head MLPs.")
    dropout: float = setting(0.1, "Dropout in the head MLPs only.")

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
