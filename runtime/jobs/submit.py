"""Submitting a job: what `singa submit` (and the Driver of a user's own
main) does.

`submit(conf, opts)` validates the job and its placement before anything
exists (a problem is a `UserError`: exit 2, no registry row, no process),
works out what the job asks of each host (`runtime.jobs.resources`), then
creates the job in the registry, where it is admitted at once (PENDING) or
queued (QUEUED, `runtime.jobs.scheduler`), writes the validated JobProto
next to its logs (0600), and starts the job master detached, in a session
of its own, so the job survives the submitting terminal. A queued job's
master waits on the registry until the job is admitted.

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
from runtime.jobs.launchers import launcher_registry


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
    slurm_opt: str | None = None      # --slurm-opt: sbatch's options (srun's in an allocation)
    modules: tuple[str, ...] = ()
    ship_only: tuple[str, ...] = ()   # shipped to the processes, already loaded here
    grace: float = 5.0
    cores: int | None = None          # cores (BLAS threads) per process; default: resources
    priority: int = 0
    after: tuple[str, ...] = ()       # "JOB[:ok|:any]", as `--after`
    overrides: tuple[tuple[str, str], ...] = ()  # (field path, value): a sweep's point
    workspace: str | None = None      # instead of the conf's (a sweep's job's own)
    array_id: int | None = None
    array_index: int | None = None
    warn: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))


def parse_after(specs: tuple[str, ...]) -> list[tuple[int, str]]:
    """`--after` values ("12", "12:ok", "12:any", or several joined by commas)
    as (job id, mode) pairs; a bad one is a UserError saying what is expected."""
    from runtime.jobs.scheduler import AFTER_MODES

    out: list[tuple[int, str]] = []
    for spec in specs:
        for item in spec.split(","):
            job, _, mode = item.strip().partition(":")
            mode = mode or "ok"
            if not job.isdigit() or mode not in AFTER_MODES:
                raise UserError(f"--after {item.strip()!r}: expected JOB[:ok|:any], a job id and "
                                "when to start: ok (the default) once it SUCCEEDED, any once it "
                                "ended at all; e.g. --after 12 or --after 12:any")
            if (int(job), mode) not in out:
                out.append((int(job), mode))
    return out


def submit(conf: str, opts: SubmitOptions, reg: jobdb.JobDB | None = None) -> int:
    """Validate, register and launch the job; returns its id."""
    from runtime import checkpoint, plugins
    from runtime.cluster import Cluster
    from runtime.config import load_job
    from runtime.jobs import hostfile, resources
    from runtime.train import single

    # a .proto is compiled to its _pb2.py, which is what loads and ships
    modules = tuple(os.path.abspath(m) if m.endswith(".py") else m
                    for m in plugins.expand(opts.modules))
    plugins.load(modules)
    # a test-only conf (SINGA's sample.conf: no train_steps, no updater) is
    # checked as such; data files must exist either way
    after = parse_after(opts.after)
    # a job that comes after another may load the checkpoint that one is to write
    loaded = load_job(conf, strict=True, submit=not opts.test, overrides=opts.overrides,
                      later_checkpoints=bool(after))
    for w in loaded.warnings:
        opts.warn(str(w))
    job = loaded.proto
    if opts.workspace:
        job.cluster.workspace = os.path.abspath(opts.workspace)
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
    reg = reg or jobdb.JobDB()
    # an engine (Slurm, MPI) is the resource manager of its own hosts: nothing asked here
    demand: dict[str, dict[str, int]] = {}
    caps: dict[str, dict[str, Any]] = {}
    chosen = launcher_registry.get(launcher) if launcher is not None else None
    if chosen is not None and chosen.chooses_hosts:
        if opts.hostfile or opts.hosts:
            raise UserError(f"--launcher {launcher}: {chosen.hosts_hint}")
        chosen.check_tool()
        placement = [chosen.name] * nprocs
        remote = [chosen.name]
        extra.update(_engine_options(chosen.name, job, opts, nprocs))
    else:
        if opts.slurm_opt:
            raise UserError("--slurm-opt goes with --launcher slurm")
        if opts.hostfile:
            hosts = hostfile.parse_hostfile(opts.hostfile)
        elif opts.hosts:
            hosts = hostfile.parse_hosts(opts.hosts)
        else:
            hosts = resources.default_hosts(reg.home)
        caps = resources.capacity(hosts)
        if opts.hostfile or opts.hosts or resources.hosts_file(reg.home).exists():
            placement = hostfile.place(hosts, nprocs, oversubscribe=opts.oversubscribe, what=what)
        else:
            # this host alone: a job with more processes than cores takes it whole
            placement = [resources.LOCAL] * nprocs
        remote = sorted({h for h in placement if not hostfile.is_local(h)})
        launcher = launcher or ("ssh" if remote else "local")
        chosen = launcher_registry.get(launcher)
        if remote and not chosen.other_hosts:
            raise UserError(f"--launcher {launcher} cannot start processes on {', '.join(remote)}; "
                            "use --launcher ssh (the default with remote hosts)")
        chosen.check_tool()
        if opts.hostfile or opts.hosts:
            extra.update(chosen.submit_options(hosts))
        mem = [m.total for m in (loaded.validation.memory if loaded.validation else [])]
        if opts.test and mem:
            mem = [max(mem)]
        demand = resources.demand(placement, resources.cores_per_proc(job, opts.cores), mem, caps)
    assert launcher is not None  # each branch above chose one
    secret = None
    if remote:
        from runtime.comm.security import JobKeys

        secret = {"curve": JobKeys.generate().to_dict()}
        if not chosen.chooses_hosts:
            hostfile.advertise_address(peer=remote[0], interface=opts.interface)  # fails early
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
        "capacity": caps,
        **extra,
    }
    try:
        row = reg.create_job(
            name=opts.name or job.name or Path(conf).stem, conf_path=os.path.abspath(conf),
            conf_text=Path(conf).read_text(), workspace=ws, launcher=launcher, hosts=placement,
            nprocs=nprocs, train_steps=0 if opts.test else job.train_steps,
            max_restarts=opts.max_restarts, options=options, secret=secret,
            priority=opts.priority, demand=demand, after=after, array_id=opts.array_id,
            array_index=opts.array_index, settings=dict(opts.overrides))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # refused (workspace in use) or failed
        raise
    if row.state == jobdb.CANCELLED:  # its dependency had already failed: nothing to start
        shutil.rmtree(staged, ignore_errors=True)
        return row.id
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


def _engine_options(name: str, job: Any, opts: SubmitOptions, nprocs: int) -> dict[str, Any]:
    """What a launcher that chooses its hosts records in the job's options:
    for Slurm, the user's --slurm-opt (checked by sbatch now: a refusal is
    a UserError), the cores per task, and the allocation `singa submit`
    runs in (its processes are then a step of it)."""
    if name != "slurm":
        if opts.slurm_opt:
            raise UserError("--slurm-opt goes with --launcher slurm")
        return {}
    from runtime.jobs import resources, slurm

    words = slurm.split_opts(opts.slurm_opt)
    threads = resources.cores_per_proc(job, opts.cores)
    slurm.check(nprocs, threads, words)
    return {"slurm": {"opts": words, "threads": threads, "allocation": slurm.allocation()}}


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
