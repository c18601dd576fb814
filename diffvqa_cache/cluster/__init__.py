"""Fanning work out: the one description of batch jobs (jobs.py), job scripts for SLURM/PBS (scripts.py) and
their submission (submit.py), a dask client for every command that needs one (dask_client.py), and the loop
that submits tasks to it and gathers their results (tasks.py)."""
