"""Launchers: start one runtime process of a job on its host, and stop it.

A launcher turns a `ProcSpec` (which process, which host, its argv and
environment, the bytes to hand over on its stdin, its log) into a `Handle`
the job master polls and signals. Registered by name, as `singa submit
--launcher` spells it:

- `local`: `subprocess` in its own session (pid = process group id), so a
  signal to the group reaches the process and all it started.
- `ssh`: OpenSSH in batch mode (`runtime.jobs.ssh`); the remote process
  makes itself a session leader and reports its pid, pgid and start time in
  its kConnect, and is signalled through `python -m runtime.jobs.pgroup` on
  its host. The ssh client lives as long as the remote process, so its exit
  is the remote exit status.

The job (binary JobProto) and the job's CURVE keys travel on the child's
stdin (see `handoff`), never on a command line or in a log.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from runtime.jobs import pgroup
from runtime.registry import Registry


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


def handoff(job_bytes: bytes, keys: dict | None) -> bytes:
    """What a runtime process reads first on its stdin: one JSON line."""
    return json.dumps({"job": base64.b64encode(job_bytes).decode(), "keys": keys}).encode() + b"\n"


def read_handoff(stream) -> tuple[bytes, dict | None]:
    line = stream.readline()
    if not line:
        raise ValueError("nothing on stdin: a runtime process is started by the job master")
    d = json.loads(line)
    return base64.b64decode(d["job"]), d.get("keys")


class Handle:
    """A launched process as the master sees it."""

    def __init__(self, spec: ProcSpec, popen: subprocess.Popen):
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

    def learned(self, pid: int, pgid: int, start_time: float) -> None:
        """What the process said of itself in its kConnect."""
        self.pid, self.pgid, self.start_time = pid, pgid, start_time

    def signal(self, sig: int) -> None:
        raise NotImplementedError

    def failure(self, code: int) -> str:
        """The exit in words, for the job's reason."""
        from runtime.jobs.registry import describe_exit

        return describe_exit(code if code >= 0 else None, -code if code < 0 else None)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


class LocalHandle(Handle):
    def signal(self, sig: int) -> None:
        pgroup.signal_group(self.pgid, self.start_time, sig)


class SshHandle(Handle):
    def __init__(self, spec: ProcSpec, popen: subprocess.Popen, opts):
        super().__init__(spec, popen)
        self.opts = opts

    def signal(self, sig: int) -> None:
        from runtime.jobs import ssh

        if self.pgid is not None:
            argv = [self.spec.argv[0], "-m", "runtime.jobs.pgroup", "signal", str(self.pgid),
                    repr(self.start_time), signal.Signals(sig).name]
            try:
                ssh.run(self.host, argv, self.opts, timeout=15, cwd=self.spec.cwd)
            except subprocess.TimeoutExpired:
                pass
        if (sig == signal.SIGKILL or self.pgid is None) and self.popen.poll() is None:
            # not connected yet, or being killed: the ssh client goes too
            self.popen.send_signal(sig)

    def failure(self, code: int) -> str:
        from runtime.jobs import ssh

        if code == 255:  # ssh's own failure: the remote exit comes through the shell
            return ssh.explain_failure(self.host, code, _read(self.spec.launch_log), opts=self.opts)
        if 128 < code < 128 + 65:  # the wrapping shell's way of saying "killed by signal"
            return super().failure(-(code - 128))
        return super().failure(code)


def _read(path: Path, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _open_log(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab", buffering=0)


def _feed(popen: subprocess.Popen, data: bytes) -> None:
    try:
        popen.stdin.write(data)
        popen.stdin.close()
    except BrokenPipeError:
        pass  # the process died at once; its exit code says why


class Launcher:
    name = ""

    def start(self, spec: ProcSpec) -> Handle:
        raise NotImplementedError


launcher_registry: Registry = Registry("launcher")


@launcher_registry.register("local")
class LocalLauncher(Launcher):
    name = "local"

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

    def __init__(self, opts=None):
        from runtime.jobs.ssh import SshOptions

        self.opts = opts or SshOptions()

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
