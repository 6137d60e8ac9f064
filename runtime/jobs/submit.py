"""Submitting a job and following it: what `singa submit` (and the Driver of
a user's own main) does.

`submit(conf, opts)` validates the job and its placement before anything
exists (a problem is a `UserError`: exit 2, no registry row, no process),
then creates the job in the registry (PENDING), writes the validated
JobProto next to its logs (0600), and starts the job master detached, in a
session of its own, so the job survives the submitting terminal.

`follow(reg, job_id)` streams the log of process 0 (on any host) with a
live progress line on a terminal, until the job ends; it returns the exit
code of `singa submit`: 0 only if the job SUCCEEDED.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from runtime.errors import UserError
from runtime.jobs import jobdb
from runtime.jobs.launcher import launcher_registry


@dataclass
class SubmitOptions:
    hostfile: str | None = None
    hosts: str | None = None
    launcher: str | None = None       # local, ssh, slurm, mpi; default: ssh when a host is remote
    name: str | None = None
    resume: bool = False
    test: bool = False
    max_restarts: int = 0
    oversubscribe: bool = False
    ssh_port: int | None = None
    ssh_identity: str | None = None
    ssh_config: str | None = None
    interface: str | None = None
    modules: tuple[str, ...] = ()
    ship_only: tuple[str, ...] = ()   # shipped to the processes, already loaded here
    grace: float = 5.0
    warn: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))


def submit(conf: str, opts: SubmitOptions, reg: jobdb.JobDB | None = None) -> int:
    """Validate, register and launch the job; returns its id."""
    from runtime import checkpoint, plugins
    from runtime.train import single
    from runtime.cluster import Cluster
    from runtime.config import load_job
    from runtime.jobs import hostfile

    # a .proto is compiled to its _pb2.py, which is what loads and ships
    modules = tuple(os.path.abspath(m) if m.endswith(".py") else m
                    for m in plugins.expand(opts.modules))
    plugins.load(modules)
    # a test-only conf (SINGA's sample.conf: no train_steps, no updater) is
    # checked as such; data files must exist either way
    loaded = load_job(conf, strict=True, submit=not opts.test)
    for w in loaded.warnings:
        opts.warn(str(w))
    job = loaded.proto
    ws = job.cluster.workspace
    if opts.resume and checkpoint.latest(ws) is None:
        raise UserError(f"--resume: no checkpoint in {checkpoint.checkpoint_dir(ws)}")
    if opts.test and not opts.resume and not job.checkpoint_path:
        raise UserError("test mode needs checkpoint_path in the conf (or --resume to use the "
                        "latest checkpoint of the workspace)")
    cluster = Cluster.from_proto(job.cluster)
    nprocs = 1 if opts.test else cluster.nprocs
    if opts.hostfile and opts.hosts:
        raise UserError("give the hosts once: --hostfile or --hosts, not both")
    launcher = opts.launcher
    if launcher is not None and launcher not in launcher_registry:
        raise UserError(f"--launcher {launcher}: unknown; known: {', '.join(launcher_registry.known())}")
    what = f"{cluster.nworkers} workers and {cluster.nservers} servers"
    extra: dict = {}
    chosen = launcher_registry.get(launcher) if launcher is not None else None
    if chosen is not None and chosen.chooses_hosts:
        if opts.hostfile or opts.hosts:
            raise UserError(f"--launcher {launcher}: {chosen.hosts_hint}")
        chosen.check_tool()
        placement = [chosen.name] * nprocs
        remote = [chosen.name]
    else:
        if opts.hostfile:
            hosts = hostfile.parse_hostfile(opts.hostfile)
        elif opts.hosts:
            hosts = hostfile.parse_hosts(opts.hosts)
        else:
            hosts = [hostfile.Host("localhost", nprocs, "this host")]
        placement = hostfile.place(hosts, nprocs, oversubscribe=opts.oversubscribe, what=what)
        remote = sorted({h for h in placement if not hostfile.is_local(h)})
        launcher = launcher or ("ssh" if remote else "local")
        chosen = launcher_registry.get(launcher)
        if remote and not chosen.other_hosts:
            raise UserError(f"--launcher {launcher} cannot start processes on {', '.join(remote)}; "
                            "use --launcher ssh (the default with remote hosts)")
        chosen.check_tool()
        if opts.hostfile or opts.hosts:
            extra.update(chosen.submit_options(hosts))
    secret = None
    if remote:
        from runtime.comm.security import JobKeys

        secret = {"curve": JobKeys.generate().to_dict()}
        if not chosen.chooses_hosts:
            hostfile.advertise_address(peer=remote[0], interface=opts.interface)  # fails early
    reg = reg or jobdb.JobDB()
    reg.check_workspace(ws)  # before the workspace is touched; create_job checks it again
    single.prepare_workspace(job)
    from runtime.jobs import code

    staged = Path(tempfile.mkdtemp(prefix="singa-code-"))
    try:
        loads = code.bundle(modules + tuple(opts.ship_only), staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    options = {
        "launcher": launcher, "modules": loads, "resume": opts.resume, "test": opts.test,
        "cwd": os.getcwd(), "grace": opts.grace, "interface": opts.interface,
        "ssh": {k: v for k, v in (("port", opts.ssh_port), ("identity", opts.ssh_identity),
                                  ("config", opts.ssh_config)) if v is not None},
        "cores": os.cpu_count() or 1,
        **extra,
    }
    try:
        row = reg.create_job(
            name=opts.name or job.name or Path(conf).stem, conf_path=os.path.abspath(conf),
            conf_text=Path(conf).read_text(), workspace=ws, launcher=launcher, hosts=placement,
            nprocs=nprocs, train_steps=0 if opts.test else job.train_steps,
            max_restarts=opts.max_restarts, options=options, secret=secret)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # refused (workspace in use) or failed
        raise
    try:
        shutil.move(str(staged), Path(row.log_dir) / "code")
        fd = os.open(Path(row.log_dir) / "job.pb", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            f.write(job.SerializeToString())
        master = _start_master(reg, row)
    except (OSError, subprocess.SubprocessError) as e:
        reg.transition(row.id, jobdb.FAILED, f"could not start the job master: {e}")
        raise UserError(f"job {row.id}: could not start the job master: {e}") from None
    reg.set_master(row.id, master.pid, _start_time(master.pid))
    return row.id


def _start_master(reg: jobdb.JobDB, row: jobdb.Job) -> subprocess.Popen:
    log_path = Path(row.log_dir) / "master.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with open(fd, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "runtime.jobs.master", str(row.id)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env=dict(os.environ, SINGA_HOME=str(reg.home)),
                                start_new_session=True)


def _start_time(pid: int) -> float | None:
    from runtime.jobs import pgroup

    return pgroup.start_time(pid)


# ------------------------------------------------------------------ follow ---

def follow(reg: jobdb.JobDB, job_id: int, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
           grace: float = 5.0) -> int:
    """Stream process 0's log until the job ends; Ctrl-C or TERM stops the job."""
    from runtime.jobs import logs

    tty = err.isatty()
    status = _Status(err) if tty else None
    interrupted = False
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        attempt = 0
        reader = None
        while True:
            job = reg.reconcile(reg.job(job_id))
            procs = reg.procs(job_id)
            if procs and procs[0].attempt != attempt:
                attempt = procs[0].attempt
                if reader is not None:
                    for line in reader.drain():
                        _emit(line, out, status)
                    reader.close()
                    print(f"singa: job {job_id}: attempt {attempt} of "
                          f"{job.max_restarts + 1}: {job.reason}", file=err, flush=True)
                reader = logs.reader(job, procs[0], from_start=True)
            if reader is not None:
                for line in reader.read():
                    _emit(line, out, status)
            if status is not None:
                status.show(job)
            if job.terminal:
                if reader is not None:
                    for line in reader.drain():
                        _emit(line, out, status)
                    reader.close()
                if job.state == jobdb.SUCCEEDED:
                    for line in _server_lines(job, procs[1:]):
                        _emit(line, out, status)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True
        if status is not None:
            status.clear()
        from runtime.jobs.kill import kill_job

        print(f"singa: job {job_id}: interrupted; stopping it (submit --detach leaves a job "
              "running)", file=err, flush=True)
        kill_job(reg, job_id, grace, "interrupted from the submitting terminal")
    finally:
        signal.signal(signal.SIGTERM, old)
        if status is not None:
            status.clear()
    job = reg.job(job_id)
    return _report_end(reg, job, err, interrupted)


def _server_lines(job: jobdb.Job, procs: list[jobdb.Proc]) -> list[str]:
    """The `Server (g,s): ...` summaries (update counts, staleness) that the
    servers of the other processes wrote last in their logs: process 0's
    log, which submit streams, has only its own servers'."""
    from runtime.jobs import logs

    out = []
    for p in procs:
        if "server" not in (p.role or ""):
            continue
        try:
            lines = logs.tail(job, p, 20)
        except UserError:
            continue  # the summary is a courtesy; `singa log` says why it cannot be read
        out += [line.rstrip("\n") for line in lines if line.startswith("Server (")]
    return out


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _emit(line: str, out: TextIO, status: "_Status | None") -> None:
    if status is not None:
        status.clear()
    out.write(line if line.endswith("\n") else line + "\n")
    out.flush()


def _report_end(reg: jobdb.JobDB, job: jobdb.Job, err: TextIO, interrupted: bool) -> int:
    took = _clock(job.elapsed)
    if job.state == jobdb.SUCCEEDED:
        print(f"singa: job {job.id} SUCCEEDED in {took}", file=err, flush=True)
        return 0
    print(f"singa: job {job.id} {job.state}" + (f": {job.reason}" if job.reason else ""),
          file=err, flush=True)
    if job.state in (jobdb.FAILED, jobdb.LOST):
        from runtime.jobs import logs

        failed = next((p for p in reg.procs(job.id) if p.state == jobdb.FAILED), None)
        if failed is not None and failed.procs_id != 0:
            try:
                lines = logs.tail(job, failed, 20)
            except UserError as e:
                lines = [f"(cannot read it: {e})"]
            print(f"--- last lines of process {failed.procs_id}'s log ({failed.host}: "
                  f"{failed.log_path}) ---", file=err)
            for line in lines or ["(empty)"]:
                print(line.rstrip("\n"), file=err)
        print(f"singa: details: singa view {job.id}; logs: singa log {job.id}", file=err, flush=True)
    return 130 if interrupted else 1


def _clock(seconds: float | None) -> str:
    s = int(seconds or 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _Status:
    """The live progress line at the bottom of a terminal."""

    def __init__(self, err: TextIO):
        self.err = err
        self.shown = False

    def show(self, job: jobdb.Job) -> None:
        parts = [f"job {job.id} {job.state}"]
        if job.train_steps:
            parts.append(f"step {job.step or 0}/{job.train_steps}")
        if job.loss is not None:
            parts.append(f"loss {job.loss:.4f}")
        if job.accuracy is not None:
            parts.append(f"accuracy {job.accuracy:.4f}")
        if job.samples_per_s:
            parts.append(f"{job.samples_per_s:,.0f} samples/s")
            if job.train_steps and job.step is not None and job.state == jobdb.RUNNING:
                left = _eta(job)
                if left is not None:
                    parts.append(f"ETA {_clock(left)}")
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.err.write("\r\x1b[K" + "  ".join(parts)[:width])
        self.err.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self.shown = False


def _eta(job: jobdb.Job) -> float | None:
    """Seconds left, from the steps done so far and the time they took."""
    if not job.started or not job.step:
        return None
    rate = job.step / max(1e-9, time.time() - job.started)
    return (job.train_steps - job.step) / rate if rate > 0 else None
