"""diffvqa-cache: DiffVQA video quality assessment as a two-stage offline feature-caching pipeline."""

__version__ = "0.1.0"
