"""The feature cache between the two stages: its settings and key (`settings`), its folder of HDF5 shards
(`folder`), the per-branch feature structure (`branches`) and the pooling rule both stages share."""

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.cache.settings import CacheConfig, ExtractConfig

__all__ = ["FeatureCache", "CacheConfig", "ExtractConfig"]
