"""`--launcher mpi`: Open MPI's `mpirun` starts every process of an attempt.

    mpirun -np N [--allow-run-as-root] --hostfile H --mca rmaps seq --bind-to none \\
        [--mca plm_rsh_agent "ssh -o BatchMode=yes ... -F CFG -p PORT -i KEY" \\
         --mca plm_rsh_no_tree_spawn 1 --mca oob_tcp_if_include NET --mca btl_tcp_if_include NET] \\
        --wdir CWD -x VAR ... python -m runtime.train.node --job-file F --log .../procs-%t.log ...

MPI only starts the processes: ZeroMQ stays the data plane, and no process
calls MPI_Init. Each takes its rank from OMPI_COMM_WORLD_RANK
(`runtime.jobs.envrank`) and reads the job from the file every host shares
(`JobFiles`, in the workspace).

Contract:
- Placement is singa's: the hostfile lists the host of each rank, one line
  a rank, read by Open MPI's sequential mapper (`rmaps seq`), so rank p runs
  where `singa submit` placed process p (a job with more processes than a
  host's cores is never refused by mpirun's slot count). Names of this host
  are written as its host name, the name mpirun knows itself by.
- `--allow-run-as-root` only when this process runs as root (mpirun refuses
  root without it: issue 16's "exited with code 1" at once).
- Remote hosts are reached by mpirun's own ssh launch with singa's ssh
  options (`ssh.client_argv`: batch mode, port, identity, config), from this
  host only (no tree spawn: the other hosts need no keys); the hosts need
  Open MPI's `orted` on the PATH of a non-interactive ssh login. MPI's own
  TCP (mpirun <-> orted) is kept to the network this host reaches the first
  remote host on, as a CIDR (`oob_tcp_if_include`), which names the same
  network on every host whatever its interface is called.
- No CPU binding (`--bind-to none`): a process runs as many BLAS threads as
  the job holds cores, which one bound core would serialise.
- A rank's death: mpirun stops the other ranks and exits; its message ("process
  rank 1 ... exited on signal 9", "Process name: [[J,1],1] Exit code: 3") names
  the rank, and that rank's handle reports that status, so the job fails
  naming the rank, its host and how it ended. The others read as stopped.
- Stop: TERM to mpirun, which forwards it to every rank on every host (each
  rank leads its own process group); KILL, after the grace, goes to each
  rank's group (over ssh for a remote one) and then to mpirun's.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shlex
import signal
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.errors import UserError
from runtime.jobs import hostfile, pgroup
from runtime.jobs.launcher import (
    Engine,
    EngineHandle,
    EngineLauncher,
    Handle,
    JobFiles,
    ProcSpec,
    _engine_argv,
    _open_log,
    _read,
    launcher_registry,
)

if TYPE_CHECKING:
    from runtime.jobs.jobdb import Job
    from runtime.jobs.ssh import SshOptions

# mpirun's words for a rank that ended its launch (Open MPI 4.x)
_SIGNALLED = re.compile(r"process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)")
_EXITED = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]\s*\n\s*Exit code:\s*(-?\d+)")
_BANNER = re.compile(r"^-{20,}$")


class MpirunEngine(Engine):
    """One `mpirun` process: its exit is the launch's, its output (the
    launch log) says which rank ended it."""

    def __init__(self, popen: subprocess.Popen[bytes], launch_log: Path):
        self.popen = popen
        self.launch_log = launch_log
        self.started = pgroup.start_time(popen.pid)
        self._sent: set[int] = set()
        self._culprit: tuple[int, int] | None = None
        self._read = False

    def poll(self) -> int | None:
        return self.popen.poll()

    def culprit(self) -> tuple[int, int] | None:
        """(rank, status) of the rank whose end ended the launch, from
        mpirun's message once it has exited (status as `poll()` gives it:
        negative for a signal); None while it runs or if it named none."""
        if self.popen.poll() is None:
            return None
        if not self._read:
            self._read = True
            text = _read(self.launch_log, 16384)
            m = _SIGNALLED.search(text)
            if m:
                self._culprit = int(m.group(1)), -int(m.group(3))
            else:
                m = _EXITED.search(text)
                if m:
                    self._culprit = int(m.group(1)), int(m.group(2))
        return self._culprit

    def message(self) -> tuple[str, str]:
        """mpirun's own account of a failed launch: (what came before its
        first boxed message, e.g. ssh's errors; the first lines of that box,
        or its last line when it printed none)."""
        lines = [ln for ln in _read(self.launch_log, 8192).splitlines()
                 if not ln.startswith("singa: ")]  # the command start_all wrote first
        before: list[str] = []
        box: list[str] | None = None
        for line in lines:
            if _BANNER.match(line.strip()):
                if box is not None:
                    break
                box = []
            elif box is not None:
                if line.strip():
                    box.append(line.strip())
            elif line.strip():
                before.append(line.strip())
        if box:
            # its first sentence (a box goes on with the usual causes)
            end = next((i for i, ln in enumerate(box[:3]) if ln.endswith((".", ":"))), 2)
            return "\n".join(before), " ".join(box[:end + 1]).rstrip(":")
        return "\n".join(before[:-1]), before[-1] if before else ""

    def signal(self, sig: int) -> None:
        # every rank's handle passes the stop on: mpirun gets each signal once
        # (a repeated TERM would not hurry it, and must not reach a recycled pid)
        if sig in self._sent:
            return
        self._sent.add(sig)
        pgroup.signal_group(self.popen.pid, self.started, sig)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


class MpiHandle(EngineHandle):
    """Rank `spec.procs` of an mpirun launch."""

    noun = "rank"

    def __init__(self, spec: ProcSpec, engine: MpirunEngine, opts: SshOptions):
        super().__init__(spec, engine)
        self.mpirun = engine
        self.opts = opts
        self.stopped = False
        self._reaped = False
        self._named: str | None = None

    # The kConnect's host name, unless it is this host's own name while
    # mpirun ran the rank on another host (hosts that share a name:
    # containers, network namespaces): then the host it was placed on.
    @property
    def reported_host(self) -> str | None:
        return self._named

    @reported_host.setter
    def reported_host(self, name: str | None) -> None:
        if name and hostfile.is_local(name) and not hostfile.is_local(self.spec.host):
            name = self.spec.host
        self._named = name

    def poll(self) -> int | None:
        code = self.mpirun.poll()
        if code is None:
            return None
        if not self._reaped:
            self._reaped = True
            self._reap()
        culprit = self.mpirun.culprit()
        if culprit is None or code == 0:
            return code
        rank, status = culprit
        if rank == self.spec.procs:
            return status
        # mpirun stopped this rank because another ended: it reads as running
        # until the master stops it, so the job's reason names the culprit
        return code if self.stopped else None

    def signal(self, sig: int) -> None:
        self.stopped = True
        if sig == signal.SIGKILL and self.pgid is not None:
            # mpirun did not end on TERM: its ranks lead their own groups and
            # would outlive it, so each is killed where it runs
            if hostfile.is_local(self.host):
                pgroup.signal_group(self.pgid, self.start_time, sig)
            else:
                _signal_remote(self, sig)
        self.engine.signal(sig)

    def failure(self, code: int) -> str:
        if self.mpirun.culprit() is None and code != 0:
            from runtime.jobs import ssh
            from runtime.jobs.jobdb import describe_exit

            before, said = self.mpirun.message()
            m = re.search(r"^ssh: .*?host (\S+)|^(\S+): Permission denied|^Host key verification",
                          before, re.M)
            if m:  # its ssh launch failed: say why as for --launcher ssh
                host = m.group(1) or m.group(2) or self.host
                said = ssh.explain_failure(host, ssh.SSH_FAILED, before, opts=self.opts) \
                    + (f" (mpirun: {said})" if said else "")
            return (f"ended with mpirun, which {describe_exit(*self.exit_of(code))}"
                    + (f": {said}" if said else ""))
        return super().failure(code)

    def _reap(self) -> None:
        """mpirun has exited: a local rank still alive was left behind by an
        mpirun that was killed (a rank leads its own group, so it outlives
        mpirun) and goes now. mpirun ends by itself only once its ranks
        have. A remote rank's orted kills it when its link to mpirun breaks."""
        if self.pgid is not None and hostfile.is_local(self.host):
            pgroup.signal_group(self.pgid, self.start_time, signal.SIGKILL)

    def exit_of(self, code: int) -> tuple[int | None, int | None]:
        if 128 < code < 128 + 65 and self.mpirun.culprit() is None:
            return None, code - 128  # mpirun's way of saying its ranks were signalled
        return super().exit_of(code)


def _signal_remote(h: Handle, sig: int) -> None:
    from runtime.jobs import ssh

    opts: SshOptions = h.opts  # type: ignore[attr-defined]
    argv = [h.spec.argv[0], "-m", "runtime.jobs.pgroup", "signal", str(h.pgid),
            repr(h.start_time), signal.Signals(sig).name]
    try:
        r = ssh.run(h.host, argv, opts.for_signals(), timeout=10, cwd=h.spec.cwd)
        h.unreachable = r.returncode == ssh.SSH_FAILED
    except subprocess.TimeoutExpired:
        h.unreachable = True


def _network_of(address: str) -> str:
    """The CIDR of the local interface that holds `address` ("10.0.3.0/24"),
    else the address alone (/32)."""
    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and a.address == address and a.netmask:
                return str(ipaddress.ip_network(f"{address}/{a.netmask}", strict=False))
    return f"{address}/32"


@launcher_registry.register("mpi")
class MpiLauncher(EngineLauncher):
    """`mpirun` (Open MPI) over the job's placement; see the module docstring."""

    name = "mpi"
    tool = "mpirun"

    def __init__(self, hosts: list[str], opts: SshOptions | None = None,
                 interface: str | None = None, hostfile_path: Path | None = None):
        from runtime.jobs.ssh import SshOptions

        self.hosts = hosts
        self.opts = opts or SshOptions()
        self.interface = interface
        self.hostfile_path = hostfile_path

    @classmethod
    def check_tool(cls) -> None:
        """mpirun on the PATH, and Open MPI's: the options it is given are
        Open MPI's (MPICH's mpiexec.hydra spells them otherwise)."""
        super().check_tool()
        try:
            r = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=30)
            said = (r.stdout + r.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UserError(f"--launcher mpi: `mpirun --version` failed: {e}") from None
        if "Open MPI" not in said and "OpenRTE" not in said:
            first = said.splitlines()[0] if said else "no output"
            raise UserError(f"--launcher mpi: the mpirun on the PATH is not Open MPI's ({first}); "
                            "install openmpi-bin, or select it with "
                            "`update-alternatives --config mpirun`")

    @classmethod
    def from_options(cls, job: Job, options: dict[str, Any]) -> MpiLauncher:
        """Over the job's placement (`job.hosts`, a host per process), with
        the ssh options and interface given to `singa submit`; the MPI
        hostfile goes beside the job's logs."""
        from runtime.jobs.ssh import SshOptions

        return cls(list(job.hosts), SshOptions(**options.get("ssh", {})),
                   options.get("interface"), Path(str(job.log_dir)) / "mpi-hostfile")

    def remote(self) -> list[str]:
        return sorted({h for h in self.hosts if not hostfile.is_local(h)})

    def write_hostfile(self, path: Path) -> Path:
        """One line a rank, the host `singa submit` placed it on (this
        host under its own name, which is how mpirun knows it)."""
        here = socket.gethostname()
        path.write_text("".join(f"{here if hostfile.is_local(h) else h.strip('[]')}\n"
                                for h in self.hosts))
        return path

    def command(self, specs: list[ProcSpec], files: JobFiles, hostfile_path: Path) -> list[str]:
        """mpirun's argv for `specs` (all the processes of an attempt)."""
        if len(specs) != len(self.hosts):
            raise ValueError(f"{len(specs)} processes but {len(self.hosts)} hosts placed")
        spec = specs[0]
        cmd = ["mpirun", "-np", str(len(specs))]
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        cmd += ["--hostfile", str(self.write_hostfile(hostfile_path)), "--mca", "rmaps", "seq",
                "--bind-to", "none"]
        remote = self.remote()
        if remote:
            from runtime.jobs import ssh

            self.opts.check()
            # Open MPI 4 drops the agent's last word when it is one character
            # long ("-p 2", "-l u" lose their value): a closing option it keeps
            agent = [*ssh.client_argv(self.opts), "-o", "BatchMode=yes"]
            spaced = [a for a in agent if any(c.isspace() for c in a)]
            if spaced:
                raise UserError(f"--launcher mpi: mpirun splits its ssh command at spaces, so "
                                f"{spaced[0]!r} cannot be passed to it; use a path without spaces")
            net = _network_of(hostfile.advertise_address(peer=remote[0], interface=self.interface))
            cmd += ["--mca", "plm_rsh_agent", " ".join(agent),
                    "--mca", "plm_rsh_no_tree_spawn", "1",
                    "--mca", "oob_tcp_if_include", net, "--mca", "btl_tcp_if_include", net]
        cmd += ["--wdir", spec.cwd]
        for k in sorted(spec.env):
            cmd += ["-x", k]
        return cmd + _engine_argv(spec.argv[0], files, spec)

    def start_all(self, specs: list[ProcSpec], files: JobFiles) -> list[Handle]:
        spec = specs[0]
        path = self.hostfile_path or files.log_pattern.parent / "mpi-hostfile"
        cmd = self.command(specs, files, path)
        with _open_log(spec.launch_log) as out:
            # the command, for whoever reads why a launch failed (it holds
            # paths and variable names only: the keys are in a 0600 file)
            out.write(f"singa: {shlex.join(cmd)}\n".encode())
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     env=dict(os.environ, **spec.env), cwd=spec.cwd,
                                     start_new_session=True)
        engine = MpirunEngine(popen, spec.launch_log)
        return [MpiHandle(s, engine, self.opts) for s in specs]
