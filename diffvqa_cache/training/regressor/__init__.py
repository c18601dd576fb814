"""Stage-2 DiffVQA regressor: DFF, TDM, FFF, TCAB (Mamba) and the weighted head, trained on the cache."""

from diffvqa_cache.training.regressor.config import RegressorConfig
from diffvqa_cache.training.regressor.model import DiffVQARegressor

__all__ = ["RegressorConfig", "DiffVQARegressor"]
