"""`predict` lets torch's idle OpenMP threads sleep instead of spinning on the cores its second thread needs."""

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from diffvqa_cache import openmp

# CPU seconds the process burns over 10 idle gaps of 30 ms, each after a parallel torch op (2 threads)
PROBE = """
import resource, sys, time
if sys.argv[1] == "passive":
    from diffvqa_cache.openmp import wait_passively
    assert wait_passively()
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
    env = {k: v for k, v in os.environ.items() if k not in openmp.USER_KNOBS}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores for a second OpenMP thread")
def test_waiting_passively_stops_idle_openmp_threads_from_burning_the_cores():
    spinning = min(float(_run(PROBE, "default")) for _ in range(2))
    passive = max(float(_run(PROBE, "passive")) for _ in range(2))
    assert passive < 0.5 * spinning, (passive, spinning)


def test_wait_passively_keeps_a_users_choice_and_says_when_torch_was_there_first():
    check = ("import os, sys; {pre}from diffvqa_cache.openmp import wait_passively; "
             "print(wait_passively(), os.environ.get('OMP_WAIT_POLICY'))")
    assert _run(check.format(pre="")) == "True PASSIVE"
    assert _run(check.format(pre="import torch; ")) == "False PASSIVE"  # set for children, too late for this process
    assert _run(check.format(pre=""), GOMP_SPINCOUNT="500") == "False None"
    assert _run(check.format(pre=""), OMP_WAIT_POLICY="ACTIVE") == "False ACTIVE"


def test_the_predict_command_sets_it_before_anything_loads_torch(monkeypatch, tmp_path):
    import cli

    calls = []
    monkeypatch.setattr(openmp, "wait_passively", lambda: calls.append(1))
    result = CliRunner().invoke(cli.app, ["predict", str(tmp_path), "--run", str(tmp_path / "no-run")])
    assert result.exit_code != 0 and calls == [1]  # (a wrong --run: the command stops after the call)
    # the command module loads no torch, so the call comes first in a real `diffvqa-cache predict`
    assert _run("import sys, cli; print([m for m in sys.modules if m.split('.')[0] == 'torch'])") == "[]"
