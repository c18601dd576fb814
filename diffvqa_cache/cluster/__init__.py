"""Fanning work out: a dask client for every command that needs one, and batch jobs on HPC schedulers."""
