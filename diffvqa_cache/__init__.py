"""diffvqa-cache: DiffVQA video quality assessment as a two-stage offline feature-caching pipeline.

`from diffvqa_cache import Scorer` scores videos with a fitted run (`scoring/scorer.py`), `FeatureCache`
reads a cache (`cache/folder.py`), `score_cached` scores cached videos (`scoring/cached.py`). Each name is
loaded on first use, so `import diffvqa_cache` stays cheap (no torch).

Layout, lowest layer first (a module imports only from its own layer or lower ones):
shared modules (config, errors, files, seeds, devices, progress) and `datasets`, `cluster`; the `cache`
between the stages; `extraction` (stage one) and `training` (stage two), which never import each other;
`run` (the folder a fit writes, above training); `scoring` (a fitted run in use); tools on top (`doctor`,
`synthetic`). See docs/architecture.md.
"""

__version__ = "0.3.0"

_LAZY = {"Scorer": "scoring.scorer", "VideoScore": "scoring.scorer", "FrameScore": "scoring.scorer",
         "Spread": "scoring.scorer", "Scores": "scoring.scorer", "FeatureCache": "cache.folder",
         "score_cached": "scoring.cached"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
