"""A real Slurm for the tests, from Debian's slurm-wlm and munge.

`SlurmCluster(workdir, nodes, ctld_addr)` writes a slurm.conf under
`workdir` (ports picked free now, state and spool directories in
`workdir`, no cgroups: proctrack/linuxproc, task/none, select/cons_tres
with CR_Core), starts `slurmctld -D` in this network namespace and one
`slurmd -D -N NAME` per node, each in its network namespace when it has one
(`Node.netns`, from tests/cluster/netns.py), and returns once `sinfo` shows
every node idle, or raises RuntimeError with the daemons' logs (after
undoing what it started). `conf` is the file every Slurm command must see
as SLURM_CONF.

munge: Slurm's clients and daemons reach munged at its system socket
(/run/munge/munge.socket.2), which network namespaces share (it is a path).
`Munge.ensure()` starts munged (as the munge user, in the foreground, a
child of this process) when none answers there, with the key Debian's
package made (a new one when absent); `stop()` stops only a munged it
started.

`close()` (idempotent; on `__exit__` and at interpreter exit) cancels every
job, waits for Slurm to have stopped their tasks, then stops the daemons by
their pid.

`available()` says why these tests cannot run here (a skip message), or None.
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_KEY = Path("/etc/munge/munge.key")
TOOLS = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo",
         "salloc", "munged", "munge")
READY_S = 40.0


def available() -> str | None:
    if os.geteuid() != 0:
        return f"a real Slurm (slurmctld, slurmd, munged) needs root (running as uid {os.geteuid()})"
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        return (f"{', '.join(missing)} not installed: apt-get install slurm-wlm munge "
                "(bin/setup does, as root)")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _answers() -> bool:
    try:
        r = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


class Munge:
    """munged at the system socket: started here only if none answers."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def ensure(self) -> None:
        if _answers():
            return
        MUNGE_SOCKET.parent.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
        if not MUNGE_KEY.exists():
            subprocess.run(["mungekey", "--create", "--keyfile", str(MUNGE_KEY)], check=True,
                           capture_output=True, timeout=30)
            shutil.chown(MUNGE_KEY, "munge", "munge")
            MUNGE_KEY.chmod(0o400)
        log = open(self.workdir / "munged.log", "wb")
        self.proc = subprocess.Popen(["runuser", "-u", "munge", "--", "munged", "-F"],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while not _answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("munged did not start: "
                                   + (self.workdir / "munged.log").read_text(errors="replace"))
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class Node:
    name: str
    addr: str
    netns: str | None = None  # run its slurmd in this network namespace
    cpus: int = 2             # what it tells Slurm it has (more than the machine's is allowed)


class SlurmCluster:
    def __init__(self, workdir: Path, nodes: list[Node], ctld_addr: str = "127.0.0.1",
                 name: str = "singatest"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes = nodes
        self.conf = self.workdir / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.munge = Munge(self.workdir)
        self._daemons: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._closed = False
        atexit.register(self.close)
        try:
            self.munge.ensure()
            self._write_conf(ctld_addr, name)
            self._start()
            self.wait_idle()
        except BaseException:
            self.close()
            raise

    def _write_conf(self, ctld_addr: str, name: str) -> None:
        w = self.workdir
        for d in ("state", "spool", "log"):
            (w / d).mkdir(parents=True, exist_ok=True)
        lines = [
            f"ClusterName={name}",
            f"SlurmctldHost={socket.gethostname()}({ctld_addr})",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
            f"StateSaveLocation={w}/state", f"SlurmdSpoolDir={w}/spool/%n",
            f"SlurmctldPidFile={w}/slurmctld.pid", f"SlurmdPidFile={w}/slurmd-%n.pid",
            f"SlurmctldLogFile={w}/log/slurmctld.log", f"SlurmdLogFile={w}/log/slurmd-%n.log",
            # no cgroups in a test container: processes tracked by parentage
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill", "MpiDefault=none", "ReturnToService=2",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            # ended jobs stay known to squeue/scontrol long enough for a test to look
            "MinJobAge=600", "KillWait=3", "InactiveLimit=0",
            # a node may claim more CPUs than the machine has (Node.cpus)
            "SlurmdParameters=config_overrides",
        ]
        lines += [f"NodeName={n.name} NodeAddr={n.addr} CPUs={n.cpus} RealMemory=2000 State=UNKNOWN"
                  for n in self.nodes]
        lines.append(f"PartitionName=debug Nodes={','.join(n.name for n in self.nodes)} "
                     "Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, argv: list[str], log_name: str) -> None:
        log = open(self.workdir / "log" / log_name, "wb")
        self._logs.append(log)
        self._daemons.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, env=self.env))

    def _start(self) -> None:
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        for n in self.nodes:
            argv = ["slurmd", "-D", "-N", n.name, "-f", str(self.conf)]
            (self.workdir / "spool" / n.name).mkdir(parents=True, exist_ok=True)
            if n.netns:
                # nsenter, not `ip netns exec`: that remounts /sys, without the
                # cgroup filesystem slurmd looks at as it starts
                argv = ["nsenter", f"--net=/run/netns/{n.netns}", *argv]
            self._spawn(argv, f"slurmd-{n.name}.out")

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A Slurm command against this cluster (text output captured)."""
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def states(self) -> dict[str, str]:
        r = self.run("sinfo", "-h", "-N", "-o", "%N %T")
        return dict(line.split() for line in r.stdout.splitlines() if len(line.split()) == 2)

    def wait_idle(self, timeout: float = READY_S) -> None:
        deadline = time.monotonic() + timeout
        names = {n.name for n in self.nodes}
        while True:
            for p in self._daemons:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args!r} exited with {p.returncode}:\n{self.logs()}")
            st = self.states()
            if names <= set(st) and all(st[n] == "idle" for n in names):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm nodes not idle after {timeout:.0f} s: {st}\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        out = []
        for f in sorted((self.workdir / "log").glob("*")):
            out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)

    def jobs(self) -> list[str]:
        """Ids of the jobs squeue shows (pending, running, completing)."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def cancel_all(self, timeout: float = 30.0) -> None:
        ids = self.jobs()
        if ids:
            self.run("scancel", *ids)
        deadline = time.monotonic() + timeout
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.2)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            if self._daemons and all(p.poll() is None for p in self._daemons):
                self.cancel_all()
        except (OSError, subprocess.SubprocessError):
            pass
        for p in reversed(self._daemons):  # the slurmds, then slurmctld
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for log in self._logs:
            log.close()
        self.munge.stop()

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
