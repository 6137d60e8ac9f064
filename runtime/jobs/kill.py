"""Stopping a job: `singa kill`, and Ctrl-C on a following `singa submit`.

The job is marked KILLED first: a terminal state is final, so neither the
master (which then sees KILLED and stops its processes) nor anyone else can
record it as FAILED or restart it. Then, not trusting the master to be alive
or quick, this process stops every process group of the job itself: TERM to
each, on its host (ssh for remote ones, through `runtime.jobs.pgroup`, which
checks the start time so a recycled pid is never hit), KILL to whatever is
left after the grace period, and finally the master. Nothing is matched by
name. Returns the problems met (a host that could not be reached): the
caller reports them, since processes may be left there.
"""
from __future__ import annotations

import signal
import sys
import time

from runtime.jobs import jobdb, pgroup


def kill_job(reg: jobdb.JobDB, job_id: int, grace: float = 10.0,
             reason: str = "killed with singa kill") -> list[str]:
    job = reg.job(job_id)
    if job.terminal:
        return []
    if job.state == jobdb.QUEUED:
        reason += " while queued; it never started"
    # its processes are stopped below (grace, then KILL): it holds its slots till then
    reg.transition(job_id, jobdb.KILLED, reason,
                   hold=0.0 if job.state == jobdb.QUEUED else grace + 10.0)
    if pgroup.alive(job.master_pid, job.master_start):
        pgroup.signal_group(job.master_pid, job.master_start, signal.SIGTERM)
    problems: list[str] = []
    if job.launcher == "slurm" and job.external_id:
        # the processes are Slurm's to stop, on hosts we do not ssh into
        import subprocess

        subprocess.run(["scancel", job.external_id], capture_output=True)
    procs = [p for p in reg.procs(job_id) if p.pgid]
    left = _signal_all(job, procs, signal.SIGTERM, problems)
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if _alive(job, p, problems)]
    if left:
        _signal_all(job, left, signal.SIGKILL, problems)
    deadline = time.monotonic() + 5
    while pgroup.alive(job.master_pid, job.master_start) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pgroup.alive(job.master_pid, job.master_start):
        pgroup.signal_group(job.master_pid, job.master_start, signal.SIGKILL)
    for p in reg.procs(job_id):
        if not p.terminal:  # a row the master wrote (e.g. LOST with its host) stays
            reg.update_proc(job_id, p.attempt, p.procs_id, state=jobdb.KILLED)
    reg.release(job_id)
    return problems


def _signal_all(job: jobdb.Job, procs: list[jobdb.Proc], sig: int, problems: list[str]) -> list[jobdb.Proc]:
    """Signal each; the ones that got it (still there)."""
    return [p for p in procs if _signal(job, p, sig, problems)]


def _signal(job: jobdb.Job, p: jobdb.Proc, sig: int, problems: list[str]) -> bool:
    from runtime.jobs.hostfile import is_local

    if is_local(p.host):
        return pgroup.signal_group(p.pgid, p.start_time, sig)
    if job.launcher == "slurm":
        return False  # scancel did it: no ssh into a Slurm allocation
    return _remote(job, p, ["signal", str(p.pgid), repr(p.start_time), signal.Signals(sig).name],
                   problems)


def _alive(job: jobdb.Job, p: jobdb.Proc, problems: list[str]) -> bool:
    from runtime.jobs.hostfile import is_local

    if is_local(p.host):
        # a process not yet started has no group (members(None) was always empty)
        return p.pgid is not None and bool(pgroup.members(p.pgid, p.start_time))
    if job.launcher == "slurm":
        return False
    return _remote(job, p, ["alive", str(p.pgid), repr(p.start_time)], problems)


def _remote(job: jobdb.Job, p: jobdb.Proc, args: list[str], problems: list[str]) -> bool:
    from runtime.jobs import ssh
    from runtime.jobs.logs import ssh_options

    argv = [sys.executable, "-m", "runtime.jobs.pgroup", *args]
    try:
        r = ssh.run(p.host, argv, ssh_options(job).for_signals(), timeout=20,
                    cwd=job.options.get("cwd"))
    except Exception as e:  # noqa: BLE001 - a host we cannot reach is reported, not fatal
        problems.append(f"process {p.procs_id} on {p.host}: {e}")
        return False
    if r.returncode == 255:
        problems.append(f"process {p.procs_id} on {p.host}: "
                        + ssh.explain_failure(p.host, 255, r.stderr.decode(errors="replace")
                                              if isinstance(r.stderr, bytes) else r.stderr))
        return False
    return r.returncode == 0
