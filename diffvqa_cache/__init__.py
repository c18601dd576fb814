"""diffvqa-cache: DiffVQA video quality assessment as a two-stage offline feature-caching pipeline.

`from diffvqa_cache import Scorer` scores videos with a fitted run (see `scoring.py`); the name is loaded
on first use, so `import diffvqa_cache` stays cheap (no torch).
"""

__version__ = "0.3.0"

_LAZY = {"Scorer": "scoring", "VideoScore": "scoring", "FrameScore": "scoring", "Spread": "scoring",
         "Scores": "scoring"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
