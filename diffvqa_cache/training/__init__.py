"""Stage two: read the cache (in memory or streamed), train the regressor under a protocol, evaluate it.
Never imports diffusers."""
