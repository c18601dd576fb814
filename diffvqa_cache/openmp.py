"""How long torch's OpenMP threads busy-wait after a parallel op: a short wait, set before torch loads.

GNU OpenMP (the runtime of torch's pip wheels) lets each thread spin 300,000 times after a parallel op before it
sleeps: about 20 ms on CPUs whose `pause` is slow (Intel since Skylake). This package runs its own threads beside
torch's: the compiled Mamba kernels (`training/regressor/scan_cpu.py`), predict's split models beside stage one,
the decoders. While torch's idle threads spin, those share the cores with them. A short spin (GOMP_SPINCOUNT=10000:
under a millisecond) still bridges torch's back-to-back ops and frees the cores soon after (BENCHMARKS.md, "OpenMP
spin"). KMP_BLOCKTIME=1 (ms) is the same setting for LLVM / Intel OpenMP (other torch builds); not measured here.

The runtime reads these when torch loads, so they take effect only when diffvqa_cache is imported before torch (as
the `diffvqa-cache` command, `python -m pipelines.*` and the benchmarks do); a value already in the environment is
kept, and child processes inherit the setting.
"""

from __future__ import annotations

import os
import sys

SETTINGS = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}
USER_KNOBS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")

defaulted: dict[str, str] = {}  # what this module put into the environment
before_torch = False  # whether it did so before torch was loaded (so that this process's runtime reads it)


def default_short_spin() -> None:
    """Put SETTINGS into the environment unless the user chose how OpenMP threads wait."""
    global before_torch
    if any(key in os.environ for key in USER_KNOBS):
        return
    before_torch = "torch" not in sys.modules
    for key, value in SETTINGS.items():
        os.environ[key] = defaulted[key] = value
