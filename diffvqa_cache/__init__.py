"""diffvqa-cache: DiffVQA video quality assessment as a two-stage offline feature-caching pipeline."""

__version__ = "0.2.0"
