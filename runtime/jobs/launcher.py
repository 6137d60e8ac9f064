"""Launchers: start the runtime processes of a job on their hosts, and stop them.

A launcher turns a `ProcSpec` (which process, which host, its argv and
environment, the bytes to hand over on its stdin, its log) into a `Handle`
the job master polls and signals. Each registers itself in
`launcher_registry` under the name `singa submit --launcher` spells, and
builds itself from the job's registry row and options
(`Launcher.from_options`), so the master never branches on the name:

- `local`: `subprocess` in its own session (pid = process group id), so a
  signal to the group reaches the process and all it started.
- `ssh`: OpenSSH in batch mode (`runtime.jobs.ssh`); the remote process
  makes itself a session leader and reports its pid, pgid and start time in
  its kConnect, and is signalled through `python -m runtime.jobs.pgroup` on
  its host. The ssh client lives as long as the remote process, so its exit
  is the remote exit status. Signalling connects with a short timeout
  (`SshOptions.for_signals`): a host that cannot be reached is marked
  `unreachable` rather than holding up the stop of a job.
- `mpi` and `slurm`, engines that start every process of an attempt at once
  (`start_all`): `mpirun` (Open MPI, over singa's placement; in
  `runtime.jobs.mpi`) and `sbatch` + `srun` (Slurm chooses the hosts; in
  `runtime.jobs.slurm`); each registers itself when imported, and
  `runtime.jobs.launchers` imports every launcher. Their processes take their rank from the
  engine's environment and read the job from a file on a filesystem every
  node shares (`JobFiles`).

The job (binary JobProto) and the job's CURVE keys travel on the child's
stdin (see `handoff`), or for an engine in a 0600 file, never on a command
line or in a log.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from runtime.errors import UserError
from runtime.jobs import pgroup
from runtime.registry import Registry

if TYPE_CHECKING:
    from runtime.jobs.jobdb import Job
    from runtime.jobs.ssh import SshOptions


@dataclass
class ProcSpec:
    procs: int
    host: str
    argv: list[str]
    env: dict[str, str]
    handoff: bytes
    log_path: Path
    launch_log: Path          # this host's file for what the launcher itself prints
    cwd: str = field(default_factory=os.getcwd)


def handoff(job_bytes: bytes, keys: dict[str, Any] | None, code: dict[str, str] | None = None) -> bytes:
    """What a runtime process reads first on its stdin: one JSON line with
    the job, the job's keys and the user's code (`runtime.jobs.code.pack`)."""
    return json.dumps({"job": base64.b64encode(job_bytes).decode(), "keys": keys,
                       "code": code or {}}).encode() + b"\n"


def read_handoff(stream: IO[bytes]) -> tuple[bytes, dict[str, Any] | None, dict[str, str]]:
    line = stream.readline()
    if not line:
        raise ValueError("nothing on stdin: a runtime process is started by the job master")
    d = json.loads(line)
    return base64.b64decode(d["job"]), d.get("keys"), d.get("code") or {}


class Handle:
    """A launched process as the master sees it."""

    unreachable = False  # its host did not answer a signal: the process is lost with its host
    noun = "process"     # what a job's reason calls it ("rank" under mpirun, "task" under Slurm)

    def __init__(self, spec: ProcSpec, popen: subprocess.Popen[bytes]):
        self.spec = spec
        self.popen = popen
        self.pid: int | None = None
        self.pgid: int | None = None
        self.start_time: float | None = None

    @property
    def host(self) -> str:
        return self.spec.host

    def poll(self) -> int | None:
        return self.popen.poll()

    def learned(self, pid: int, pgid: int, start_time: float | None) -> None:
        """What the process said of itself in its kConnect."""
        self.pid, self.pgid, self.start_time = pid, pgid, start_time

    def signal(self, sig: int) -> None:
        raise NotImplementedError

    def waiting(self) -> str | None:
        """Why the process is not started yet when an engine keeps it waiting
        in its own queue (the master shows the job QUEUED with it); else None."""
        return None

    def failure(self, code: int) -> str:
        """The exit in words, for the job's reason."""
        from runtime.jobs.jobdb import describe_exit

        return describe_exit(*self.exit_of(code))

    def exit_of(self, code: int) -> tuple[int | None, int | None]:
        """(exit code, signal) of the status `poll()` gave: one of them is None."""
        return (code, None) if code >= 0 else (None, -code)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


class LocalHandle(Handle):
    def signal(self, sig: int) -> None:
        pgroup.signal_group(self.pgid, self.start_time, sig)


class SshHandle(Handle):
    def __init__(self, spec: ProcSpec, popen: subprocess.Popen[bytes], opts: SshOptions):
        super().__init__(spec, popen)
        self.opts = opts

    def signal(self, sig: int) -> None:
        from runtime.jobs import ssh

        if self.pgid is not None:
            argv = [self.spec.argv[0], "-m", "runtime.jobs.pgroup", "signal", str(self.pgid),
                    repr(self.start_time), signal.Signals(sig).name]
            try:
                r = ssh.run(self.host, argv, self.opts.for_signals(), timeout=10,
                            cwd=self.spec.cwd)
                self.unreachable = r.returncode == ssh.SSH_FAILED
            except subprocess.TimeoutExpired:
                self.unreachable = True
        if (sig == signal.SIGKILL or self.pgid is None) and self.popen.poll() is None:
            # not connected yet, or being killed: the ssh client goes too
            self.popen.send_signal(sig)

    def failure(self, code: int) -> str:
        from runtime.jobs import ssh

        if code == 255:  # ssh's own failure: the remote exit comes through the shell
            return ssh.explain_failure(self.host, code, _read(self.spec.launch_log), opts=self.opts)
        return super().failure(code)

    def exit_of(self, code: int) -> tuple[int | None, int | None]:
        if 128 < code < 128 + 65:  # the wrapping shell's way of saying "killed by signal"
            return None, code - 128
        return super().exit_of(code)


def _read(path: Path, limit: int = 4096) -> str:
    from runtime.jobs.logfile import tail_text

    return tail_text(path, limit)


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab", buffering=0)


def _feed(popen: subprocess.Popen[bytes], data: bytes) -> None:
    stdin = popen.stdin
    assert stdin is not None  # started with stdin=PIPE
    try:
        stdin.write(data)
        stdin.close()
    except BrokenPipeError:
        pass  # the process died at once; its exit code says why


class Launcher:
    name = ""
    chooses_hosts = False  # the hosts are known only once the processes run (Slurm places them)
    hosts_hint = ""        # with chooses_hosts: why --hostfile/--hosts are refused, and what instead
    other_hosts = True     # can start processes on hosts other than this one
    tool: str | None = None  # the program it runs, which must be on this host's PATH

    @classmethod
    def check_tool(cls) -> None:
        """A UserError when the program this launcher runs is not on the PATH."""
        if cls.tool is not None and shutil.which(cls.tool) is None:
            raise UserError(f"--launcher {cls.name}: {cls.tool} is not on the PATH of this host")

    @classmethod
    def submit_options(cls, hosts: list[Any]) -> dict[str, Any]:
        """What `singa submit` records in the job's options for this launcher
        from the hosts the user gave (`hostfile.Host`s)."""
        return {}

    @classmethod
    def from_options(cls, job: Job, options: dict[str, Any]) -> Launcher:
        """This launcher for `job` (its registry row), configured from the
        job's `options` (as `singa submit` recorded them)."""
        return cls()

    def start(self, spec: ProcSpec) -> Handle:
        raise NotImplementedError


launcher_registry: Registry = Registry("launcher")


@launcher_registry.register("local")
class LocalLauncher(Launcher):
    name = "local"
    other_hosts = False

    def start(self, spec: ProcSpec) -> Handle:
        with _open_log(spec.launch_log) as out:
            popen = subprocess.Popen(spec.argv, stdin=subprocess.PIPE, stdout=out, stderr=out,
                                     env=dict(os.environ, **spec.env), cwd=spec.cwd,
                                     start_new_session=True)
        h = LocalHandle(spec, popen)
        h.learned(popen.pid, popen.pid, pgroup.start_time(popen.pid))
        _feed(popen, spec.handoff)
        return h


@launcher_registry.register("ssh")
class SshLauncher(Launcher):
    name = "ssh"

    def __init__(self, opts: SshOptions | None = None) -> None:
        from runtime.jobs.ssh import SshOptions

        self.opts = opts or SshOptions()

    @classmethod
    def from_options(cls, job: Job, options: dict[str, Any]) -> Launcher:
        """With the ssh port, identity and config given to `singa submit`."""
        from runtime.jobs.ssh import SshOptions

        return cls(SshOptions(**options.get("ssh", {})))

    def start(self, spec: ProcSpec) -> Handle:
        from runtime.jobs import hostfile, ssh

        if hostfile.is_local(spec.host):
            return LocalLauncher().start(spec)
        # A shell waits for the process, so a signal that kills it comes back
        # as the shell's exit status 128+N through ssh (ssh itself would say 255).
        wrapped = ["sh", "-c", '"$0" "$@"; exit $?', *spec.argv]
        argv = ssh.ssh_argv(spec.host, wrapped, self.opts, env=spec.env, cwd=spec.cwd)
        with _open_log(spec.launch_log) as out:
            popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out,
                                     start_new_session=True)
        _feed(popen, spec.handoff)
        return SshHandle(spec, popen, self.opts)


# ------------------------------------------------- engines: slurm and mpi ---
class Engine:
    """An external engine that starts every process of an attempt at once
    (`sbatch`+`srun`, `mpirun`); each process takes its rank from the
    environment the engine sets (`runtime.jobs.envrank`) and reads the job
    from a file on a filesystem every node shares (`JobFiles`)."""

    def poll(self) -> int | None:
        raise NotImplementedError

    def signal(self, sig: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class EngineLauncher(Launcher):
    """A launcher that hands every process of an attempt to an `Engine` at
    once (`start_all`) rather than starting them one by one."""

    external_id: str | None = None  # the engine's id of the launch (Slurm's job id), once started

    def advertise(self, interface: str | None) -> str:
        """The address the job master listens on, for processes on hosts the
        engine chooses: by default the one this host routes to itself by name."""
        import socket

        from runtime.jobs import hostfile

        return hostfile.advertise_address(peer=socket.gethostname(), interface=interface)

    def start_all(self, specs: list[ProcSpec], files: JobFiles) -> list[Handle]:
        raise NotImplementedError


class EngineHandle(Handle):
    """One process of an engine's launch: its exit is the engine's (an
    engine reports one status for the whole launch); its host, pid and
    process group are what it said in its kConnect."""

    def __init__(self, spec: ProcSpec, engine: Engine):
        self.spec = spec
        self.engine = engine
        self.pid = self.pgid = self.start_time = None
        self.reported_host: str | None = None

    @property
    def host(self) -> str:
        return self.reported_host or self.spec.host

    def poll(self) -> int | None:
        return self.engine.poll()

    def signal(self, sig: int) -> None:
        self.engine.signal(sig)

    def close(self) -> None:
        self.engine.close()


@dataclass
class JobFiles:
    """Where an engine's processes find the job: `job.pb` and its `.keys`
    (0600), and their logs (`attempt-A/procs-%t.log`, %t the rank)."""
    job_file: Path
    log_pattern: Path


def _engine_argv(python: str, files: JobFiles, spec: ProcSpec) -> list[str]:
    """The node argv of a spec, rank-less: the engine gives each its rank."""
    argv = [python, "-m", "runtime.train.node"]
    skip = {"--procs", "--log"}
    it = iter(spec.argv[3:])
    for a in it:
        if a in skip:
            next(it)
            continue
        argv.append(a)
    return argv + ["--job-file", str(files.job_file), "--log", str(files.log_pattern)]
