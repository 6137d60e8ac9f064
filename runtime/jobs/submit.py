"""Submitting a job: what `singa submit` (and the Driver of a user's own
main) does.

`submit(conf, opts)` validates the job and its placement before anything
exists (a problem is a `UserError`: exit 2, no registry row, no process),
then creates the job in the registry (PENDING), writes the validated
JobProto next to its logs (0600), and starts the job master detached, in a
session of its own, so the job survives the submitting terminal.

`submit` returns the job's id; its only output is the conf's warnings,
through `opts.warn`. Following the job on a terminal (its log, the progress
line, the end report) is the CLI's: singa_cli.follow.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    from runtime.cluster import Cluster
    from runtime.config import load_job
    from runtime.jobs import hostfile
    from runtime.train import single

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
    extra: dict[str, Any] = {}
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
    assert launcher is not None  # each branch above chose one
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


def _start_master(reg: jobdb.JobDB, row: jobdb.Job) -> subprocess.Popen[bytes]:
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
