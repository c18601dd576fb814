"""Stage-2 DiffVQA regressor: DFF, TDM, FFF, TCAB (Mamba) and the weighted head, trained on the cache."""

from .config import RegressorConfig
from .model import DiffVQARegressor

__all__ = ["RegressorConfig", "DiffVQARegressor"]
