"""How torch's idle OpenMP threads wait, for `predict`: passively, set before torch loads.

GNU OpenMP (the runtime of torch's pip wheels) lets each idle thread spin 300,000 times after a parallel op before
it sleeps: milliseconds on CPUs whose `pause` is slow (Intel since Skylake). `predict` runs two torch workloads at
once, stage one in the main thread and the split models in a second one, each with its own OpenMP threads, and
the spinning threads of one take the cores from the other: waiting passively, predict scored 0.41 -> 0.48 videos/s
on 2 CPU cores (BENCHMARKS.md "Scoring many videos", 2026-12-05 20:02 vs 20:07). Fits keep torch's default: there
a short spin or none cost the TCAB-off epoch 4-16% for a 4% faster TCAB-on epoch ("OpenMP spin").

The runtime reads the setting when torch loads, so `wait_passively` works only before torch is imported (the
`predict` command calls it first); a choice already in the environment (OMP_WAIT_POLICY, GOMP_SPINCOUNT,
KMP_BLOCKTIME) is kept. In your own scripts: `OMP_WAIT_POLICY=PASSIVE python ...`.
"""

from __future__ import annotations

import os
import sys

USER_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def wait_passively() -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE for this process and its children unless the user chose how OpenMP threads
    wait; True when it was set before torch loaded (so that it takes effect here)."""
    if any(key in os.environ for key in USER_KNOBS):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "torch" not in sys.modules
