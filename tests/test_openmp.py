"""Importing diffvqa_cache before torch keeps torch's idle OpenMP threads from busy-waiting on the cores."""

import os
import subprocess
import sys

import pytest

# CPU seconds the process burns over 10 idle gaps of 30 ms, each after a parallel torch op (2 threads)
PROBE = """
import resource, sys, time
if sys.argv[1] == "package-first":
    import diffvqa_cache
import torch
torch.set_num_threads(2)
a = torch.randn(256, 256)
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
a @ a
c0 = cpu()
for _ in range(10):
    a @ a
    time.sleep(0.03)
print(cpu() - c0)
"""


def _run(code: str, *args: str, **env_changes) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores for a second OpenMP thread")
def test_idle_openmp_threads_stop_spinning_when_the_package_is_imported_first():
    spinning = min(float(_run(PROBE, "torch-first")) for _ in range(2))
    short = max(float(_run(PROBE, "package-first")) for _ in range(2))
    assert short < 0.5 * spinning, (short, spinning)


def test_the_command_sets_the_short_spin_before_torch_loads_and_keeps_a_users_choice():
    check = ("import sys, os, cli; from diffvqa_cache import openmp; "
             "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('KMP_BLOCKTIME'), openmp.before_torch)")
    assert _run(check) == "10000 1 True"
    assert _run(check, OMP_WAIT_POLICY="ACTIVE") == "None None False"
    assert _run(check, GOMP_SPINCOUNT="500") == "500 None False"
