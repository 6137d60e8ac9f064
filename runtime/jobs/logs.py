"""A job process's log wherever it lives: on this host, or on a remote host
read over ssh (the `yarn logs -containerId` model: logs stay on the host of
their process).

- `tail(job, proc, n)`: its last n lines.
- `reader(job, proc)`: an incremental reader: `read()` returns the complete
  lines added since the last call, without blocking; `drain()` waits briefly
  for the rest once the process has ended; `close()`.
"""
from __future__ import annotations

import os
import queue
import subprocess
import threading
from typing import TYPE_CHECKING

from runtime.jobs import jobdb, logfile

if TYPE_CHECKING:
    from runtime.jobs.ssh import SshOptions


def _is_local(host: str) -> bool:
    from runtime.jobs.hostfile import is_local

    return is_local(host)


def ssh_options(job: jobdb.Job) -> SshOptions:
    from runtime.jobs.ssh import SshOptions

    return SshOptions(**job.options.get("ssh", {}))


def _here(job: jobdb.Job, proc: jobdb.Proc) -> bool:
    """Whether the log is readable on this host: its process ran here, or an
    engine (Slurm, MPI) wrote it on the filesystem the job's nodes share."""
    return _is_local(proc.host) or job.launcher in ("slurm", "mpi")


def tail(job: jobdb.Job, proc: jobdb.Proc, n: int) -> list[str]:
    if not proc.log_path:
        return []
    if _here(job, proc):
        return logfile.tail(proc.log_path, n)
    from runtime.errors import UserError
    from runtime.jobs import ssh

    r = ssh.run(proc.host, ["tail", "-n", str(n), proc.log_path], ssh_options(job), timeout=30)
    if r.returncode != 0:
        raise UserError(f"cannot read the log of process {proc.procs_id} on {proc.host}: "
                        + (ssh.explain_failure(proc.host, r.returncode, _text(r.stderr))
                           if r.returncode == 255 else _text(r.stderr).strip()))
    return _text(r.stdout).splitlines()


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


class LocalReader:
    def __init__(self, path: str, from_start: bool = True):
        self.path = path
        self.pos = 0 if from_start else _size(path)
        self.partial = b""

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [l.decode(errors="replace") for l in lines]

    def drain(self) -> list[str]:
        lines = self.read()
        if self.partial:
            lines.append(self.partial.decode(errors="replace"))
            self.partial = b""
        return lines

    def close(self) -> None:
        pass


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class RemoteReader:
    """`tail -F` of the log on its host over ssh, read by a thread."""

    def __init__(self, job: jobdb.Job, proc: jobdb.Proc, from_start: bool = True):
        from runtime.jobs import ssh

        self.job, self.proc = job, proc
        self.seen = 0  # lines delivered, counted from the start of the file
        self.from_start = from_start
        start = "+1" if from_start else "0"
        argv = ssh.ssh_argv(proc.host, ["tail", "-n", start, "-F", proc.log_path], ssh_options(job))
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None  # stdout=PIPE
        for raw in self.popen.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))

    def read(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                self.seen += len(out)
                return out

    def drain(self) -> list[str]:
        """The rest of a finished process's log: the follower may lag (an ssh
        session takes a while to start), so the lines after those already
        delivered are fetched once, exactly."""
        from runtime.jobs import ssh

        got = self.read()
        self.close()
        got += self.read()
        if not self.from_start:
            return got
        r = ssh.run(self.proc.host, ["tail", "-n", f"+{self.seen + 1}", self.proc.log_path],
                    ssh_options(self.job), timeout=30)
        rest = _text(r.stdout).splitlines() if r.returncode == 0 else []
        self.seen += len(rest)
        return got + rest

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.thread.join(timeout=5)  # the lines already in the pipe are delivered


def reader(job: jobdb.Job, proc: jobdb.Proc, from_start: bool = True) -> LocalReader | RemoteReader:
    if _here(job, proc):
        return LocalReader(proc.log_path, from_start)
    return RemoteReader(job, proc, from_start)
