"""A real one-node SLURM on this machine, in a temp folder: munged, slurmctld and slurmd on their own config.

The tests use it through the `slurm` fixture (tests/conftest.py); by hand, to try a job before sending it
to a real cluster (root, Debian's `slurm-wlm` and `munge` installed):

    python tests/slurm.py /tmp/myslurm      # prints `export SLURM_CONF=...`, runs until Ctrl-C

Everything (key, socket, state, spool, logs, pid files) lives in the folder, on free ports, so it never
touches a system SLURM or munge. `stop()` ends exactly the daemons `start()` started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here; the message says why (the tests skip with it)."""


def _end_with_parent() -> None:
    """In a daemon before it starts: end it when the process that started it ends, however it ends (a test
    run killed by a timeout runs no teardown, and would leave the daemons running)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) - 512


def slurm_conf(folder: Path, host: str, munge_socket: Path, cpus: int, memory_mb: int) -> str:
    """slurm.conf for one node (this host) and one partition `debug`, no accounting, no cgroups."""
    f = folder
    return f"""\
ClusterName=diffvqa-local
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={f}/state
SlurmdSpoolDir={f}/spool
SlurmctldPidFile={f}/slurmctld.pid
SlurmdPidFile={f}/slurmd.pid
SlurmctldLogFile={f}/log/slurmctld.log
SlurmdLogFile={f}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    """Start/stop the three daemons; `run` runs client commands against them (SLURM_CONF set)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict:
        """This process's environment (as it is now: sbatch passes it on to the jobs), SLURM_CONF set."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": PATH}

    def start(self, timeout: float = 30.0) -> "LocalSlurm":
        missing = [n for n in DAEMONS + CLIENTS if shutil.which(n, path=PATH) is None]
        if missing:
            raise SlurmUnavailable(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmd must run as root to start jobs (these tests start their own SLURM)")
        f = self.folder
        for sub in ("munge", "state", "spool", "log"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        (f / "munge").chmod(0o700)
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = f / "munge" / "munge.sock"
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(slurm_conf(f, host, sock, os.cpu_count() or 1, _memory_mb()))
        try:
            self._spawn("munged", "-F", "-f", f"--key-file={key}", f"--socket={sock}",
                        f"--pid-file={f}/munge/munged.pid", f"--log-file={f}/log/munged.log",
                        f"--seed-file={f}/munge/munged.seed")
            self._wait(lambda: sock.exists(), timeout, "munged did not create its socket")
            self._spawn("slurmctld", "-D", "-f", str(self.conf))
            self._spawn("slurmd", "-D", "-f", str(self.conf))
            self._wait(lambda: self.run("sinfo", "-h", "-o", "%T", check=False).strip() == "idle", timeout,
                       "the node did not become idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.folder / "log" / f"{name}.out", "wb")
        self.procs.append(subprocess.Popen([shutil.which(name, path=PATH), *args], stdout=log,
                                           stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                                           preexec_fn=_end_with_parent))
        log.close()

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not ready():
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > end:
                name = Path(dead[0].args[0]).name if dead else "?"
                raise SlurmUnavailable(f"{what} ({name + ' exited; ' if dead else ''}logs: {self.folder / 'log'}): "
                                       f"{self._log_tail()}")
            time.sleep(0.1)

    def _log_tail(self) -> str:
        lines = []
        for log in sorted((self.folder / "log").glob("*")):
            lines += [ln for ln in log.read_text(errors="replace").splitlines() if "error" in ln.lower()][-2:]
        return " | ".join(lines[-4:])

    def run(self, *cmd: str, check: bool = True) -> str:
        """A client command against this cluster; its stdout."""
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        return proc.stdout

    def queued(self, *job_ids: str) -> list[str]:
        """The given jobs (all without ids; array tasks included) still pending or running."""
        select = ["-j", ",".join(job_ids)] if job_ids else []
        out = self.run("squeue", "-h", "-o", "%i", *select, check=False)
        return out.split()

    def wait(self, *job_ids: str, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while self.queued(*job_ids):
            if time.monotonic() > end:
                raise TimeoutError(f"jobs {job_ids} still queued after {timeout:.0f} s: {self.queued(*job_ids)}")
            time.sleep(0.2)

    def states(self, job_id: str) -> list[str]:
        """JobState of a job, or of each task of an array (COMPLETED, FAILED, CANCELLED...): no accounting here,
        so from scontrol, which keeps ended jobs for MinJobAge."""
        out = self.run("scontrol", "show", "job", "-o", job_id)
        return [w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")]

    def stop(self) -> None:
        """Cancel this cluster's jobs, then end the daemons started here (newest first)."""
        if self.procs and self.procs[-1].poll() is None:
            self.run("scancel", "--user", str(os.geteuid()), check=False)
            try:
                self.wait(timeout=15)
            except TimeoutError:
                pass
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` stops the daemons too
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "local-slurm").resolve()
    cluster = LocalSlurm(folder).start()
    print(f"SLURM is up (node idle). In another shell:\n  export SLURM_CONF={cluster.conf}\n"
          f"  sinfo; sbatch ...; squeue\nlogs: {folder / 'log'}. Ctrl-C stops it.", flush=True)
    try:
        while all(p.poll() is None for p in cluster.procs):
            time.sleep(1)
        print("a daemon exited; see the logs", file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()
