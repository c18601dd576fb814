"""Stage-2 DiffVQA regressor: DFF, TDM, FFF, TCAB (Mamba) and the weighted head, trained on the cache.

`RegressorConfig` imports no torch; the model is imported on first use (so the CLI's `--help` stays fast)."""

from diffvqa_cache.training.regressor.config import RegressorConfig

__all__ = ["RegressorConfig", "DiffVQARegressor"]


def __getattr__(name: str):
    if name == "DiffVQARegressor":
        from diffvqa_cache.training.regressor.model import DiffVQARegressor

        return DiffVQARegressor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
