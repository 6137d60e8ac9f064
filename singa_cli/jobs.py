"""`singa list` and `singa view JOB` (alias `singa status JOB`): what the registry knows.

Both reconcile first: a job whose master has died is shown LOST, never a stale
RUNNING. Both are on a user's hot path (`watch singa list`), so this module
imports only click, the standard library, `singa_cli.fmt` and `runtime.jobs.jobdb`/`logfile`:
no numpy, protobuf or zmq (see tests/cli/test_jobs_cli.py and bench/registry_list.py).
Secrets (`jobs.secret`) and the conf text are never printed, not even with --json.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from runtime.errors import UserError
from runtime.jobs import jobdb
from singa_cli import fmt

TAIL_LINES = 20


# -- singa list ----------------------------------------------------------------------------

def _parse_states(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for v in values:
        for given in v.split(","):
            s = given.strip().upper()
            if not s:
                continue
            if s not in jobdb.STATES:
                raise click.BadParameter(f"unknown state {given.strip()!r}; expected one of "
                                         f"{', '.join(jobdb.STATES)}", ctx=ctx, param=param)
            if s not in out:
                out.append(s)
    return out


def _list_row(j: jobdb.Job) -> list[str]:
    # Slurm chooses a job's nodes (`singa view` names them): its Slurm job id says more here
    hosts = f"slurm:{j.external_id}" if j.launcher == "slurm" and j.external_id else fmt.hosts(j.hosts)
    return [str(j.id), j.name or "-", j.state, str(j.nprocs if j.nprocs is not None else "-"),
            hosts, fmt.step(j.step, j.train_steps), fmt.ts(j.started), fmt.dur(j.elapsed)]


@click.command("list")
@click.option("--all", "show_all", is_flag=True, help="Every job, ended ones too.")
@click.option("--state", "states", multiple=True, callback=_parse_states, metavar="STATE",
              help="Only jobs in STATE (" + ", ".join(jobdb.STATES) + "); repeatable or "
                   "comma-separated. QUEUED jobs are listed in queue order.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as a JSON list.")
def list_jobs(show_all: bool, states: list[str], as_json: bool) -> None:
    """List jobs: the active ones (QUEUED, PENDING, RUNNING) unless --all or --state.

    The jobs of an array (singa sweep) are listed together under a line that
    names the array and counts its jobs by state (all of them, listed or not).
    """
    with jobdb.JobDB() as reg:
        # Reconcile every job that claims to be active, so none shows a stale RUNNING.
        just_ended = []
        for j in reg.jobs(jobdb.ACTIVE):
            fresh = reg.reconcile(j)
            if fresh.terminal:
                just_ended.append(fresh)
        if states:
            jobs = reg.jobs(states)
        elif show_all:
            jobs = reg.jobs()
        else:
            # A job that was active a moment ago and was just found LOST stays in
            # this listing once, so the user sees what became of it.
            jobs = sorted(reg.jobs(jobdb.ACTIVE) + just_ended, key=lambda j: j.id)
        path = jobdb.show_path(reg.path)
        arrays = {a: _array_line(reg, a) for a in dict.fromkeys(
            j.array_id for j in jobs if j.array_id is not None)}
    if as_json:
        click.echo(json.dumps([j.public_dict() for j in jobs], indent=2))
        return
    if not jobs:
        if states:
            click.echo(f"no jobs in state {', '.join(states)} ({path})")
        elif show_all:
            click.echo(f"no jobs in the registry ({path})")
        else:
            click.echo("no active jobs; 'singa list --all' shows the ended ones too")
        return
    header = ["JOB ID", "NAME", "STATE", "PROCS", "HOSTS", "STEP", "STARTED", "ELAPSED"]
    if states == [jobdb.QUEUED]:
        # the queue's order: priority (higher first), then submission
        jobs.sort(key=lambda j: (-j.priority, j.id))
    rows = [_list_row(j) for j in jobs]
    if any(j.state == jobdb.QUEUED for j in jobs):
        header += ["PRIO", "WAITING FOR"]
        for row, j in zip(rows, jobs):
            queued = j.state == jobdb.QUEUED
            row += [str(j.priority), _waiting(j.reason) if queued else ""]
    click.echo(_grouped(fmt.table(header, rows), jobs, arrays))


def _array_line(reg: jobdb.JobDB, array_id: int) -> str:
    """"array 3: conv (6 jobs: 2 RUNNING, 4 QUEUED)", counting every job of
    the array, listed or not."""
    states = [j.state for j in reg.array_jobs(array_id)]
    return (f"array {array_id}: {reg.array(array_id)['name']} ({len(states)} "
            f"job{'s' if len(states) != 1 else ''}: {fmt.counts(states, jobdb.STATES)})")


def _grouped(table: str, jobs: list[jobdb.Job], arrays: dict[int, str]) -> str:
    """The table with each array's jobs moved under a line naming the array,
    where its first listed job was; standalone jobs stay where they were."""
    header, *lines = table.split("\n")
    if not arrays or len(lines) != len(jobs):  # a cell with a line break: kept as it is
        return table
    out = [header]
    shown: set[int] = set()
    for k, j in enumerate(jobs):
        if j.array_id is None:
            out.append(lines[k])
        elif j.array_id not in shown:
            shown.add(j.array_id)
            out.append(arrays[j.array_id])
            out += [lines[m] for m, o in enumerate(jobs) if o.array_id == j.array_id]
    return "\n".join(out)


def _waiting(reason: str) -> str:
    return reason.removeprefix("waiting for ") or "-"


def _asks(job: jobdb.Job) -> str:
    """What the job holds (or asks for) on each host: "localhost: 2 cores, 1.2 GiB"."""
    from runtime.units import human_bytes

    parts = []
    for host, d in job.demand.items():
        mem = f", {human_bytes(d.get('mem', 0))}" if d.get("mem") else ""
        parts.append(f"{host}: {d.get('cores', 0)} core{'s' if d.get('cores') != 1 else ''}{mem} "
                     f"({d.get('procs', 0)} proc{'s' if d.get('procs') != 1 else ''}, "
                     f"{d.get('threads', 1)} thread{'s' if d.get('threads') != 1 else ''} each)")
    return "; ".join(parts) or "- (the engine's resource manager decides)"


# -- singa view / status -------------------------------------------------------------------

def _proc_name(p: jobdb.Proc) -> str:
    role = f" ({p.role})" if p.role else ""
    return f"procs {p.procs_id}{role} on {p.host or 'this host'}"


def _attempt_summary(procs: list[jobdb.Proc]) -> str:
    failed = [p for p in procs if p.state == jobdb.FAILED]
    if failed:
        p = failed[0]
        how = f"{_proc_name(p)} {jobdb.describe_exit(p.exit_code, p.signal)}"
    elif procs and all(p.state == jobdb.SUCCEEDED for p in procs):
        how = f"all {len(procs)} processes succeeded"
    else:
        counts: dict[str, int] = {}
        for p in procs:
            counts[p.state] = counts.get(p.state, 0) + 1
        how = ", ".join(f"{n} {s}" for s, n in counts.items())
    logs = [os.path.dirname(p.log_path) for p in procs if p.log_path]
    if logs:
        try:
            where = os.path.commonpath(logs)
        except ValueError:
            where = logs[0]
        how += f"; logs in {jobdb.show_path(where)}"
    return how


def _failing_tail(job: jobdb.Job, p: jobdb.Proc) -> list[str]:
    """Lines telling which process failed, then the end of its log (or where to read it)."""
    out = [f"Failing process: {_proc_name(p)} "
           f"{jobdb.describe_exit(p.exit_code, p.signal)}"]
    if not p.log_path:
        return out + ["(no log file recorded for it)"]
    try:
        if fmt.is_local(p.host):
            lines = _local_tail(p.log_path)
        else:
            from runtime.jobs import logs  # ssh only when a log is remote

            lines = logs.tail(job, p, TAIL_LINES)
    except UserError as e:
        return out + [f"(cannot show its log: {e})"]
    except Exception as e:  # noqa: BLE001 - a failed log fetch must not hide the job's state
        return out + [f"(cannot show its log {p.log_path} on {p.host}: {e}; "
                      f"try singa log {job.id} --proc {p.procs_id})"]
    if not lines:
        return out + [f"its log {jobdb.show_path(p.log_path)} is empty"]
    return out + [f"Last {len(lines)} lines of {jobdb.show_path(p.log_path)}:",
                  *("    " + line for line in lines)]


def _local_tail(path: str) -> list[str]:
    from runtime.jobs import logfile

    return logfile.tail(path, TAIL_LINES)


def _progress(job: jobdb.Job) -> str:
    parts = [f"step {fmt.step(job.step, job.train_steps)}"]
    if job.loss is not None:
        parts.append(f"loss {job.loss:.4f}")
    if job.accuracy is not None:
        parts.append(f"accuracy {job.accuracy:.4f}")
    if job.samples_per_s is not None:
        parts.append(f"{job.samples_per_s:.1f} samples/s")
    return ", ".join(parts)


def _host_counts(hosts: list[str]) -> str:
    counts: dict[str, int] = {}
    for h in hosts:
        counts[h] = counts.get(h, 0) + 1
    return ", ".join(f"{h} ({n} proc{'s' if n != 1 else ''})" for h, n in counts.items()) or "-"


def _render_view(job: jobdb.Job, procs: list[jobdb.Proc], now: float) -> str:
    attempts: dict[int, list[jobdb.Proc]] = {}
    for p in procs:
        attempts.setdefault(p.attempt, []).append(p)
    latest = max(attempts) if attempts else None
    fields: list[tuple[str, str]] = [
        ("state", job.state + (f": {job.reason}" if job.reason else "")),
        ("conf", f"{job.conf_path or '-'}"
                 + (f" (sha256 {job.conf_hash[:12]})" if job.conf_hash else "")),
        ("user", job.user or "-"),
        ("attempts", f"{job.attempts} (max restarts {job.max_restarts})"),
        ("submitted", fmt.ts(job.submitted)),
        ("started", fmt.ts(job.started)),
        ("ended", fmt.ts(job.ended)),
        ("elapsed", fmt.dur(job.elapsed)),
        ("workspace", job.workspace or "-"),
        ("log dir", jobdb.show_path(job.log_dir) if job.log_dir else "-"),
        ("launcher", job.launcher or "-"),
        ("hosts", _host_counts(job.hosts)),
        ("resources", _asks(job)),
        ("priority", str(job.priority)),
        ("progress", _progress(job)),
    ]
    if job.after:
        fields.insert(1, ("after", ", ".join(f"{p}:{m}" for p, m in job.after)))
    if job.array_id is not None:
        point = " ".join(f"{k}={v}" for k, v in job.settings.items())
        fields.insert(1, ("array", f"{job.array_id}[{job.array_index}]" + (f": {point}" if point else "")))
    if job.master_pid is not None:
        fields.append(("master", f"pid {job.master_pid}"))
    if job.external_id:
        fields.append(("external id", job.external_id))
    width = max(len(k) for k, _ in fields) + 2
    out = [f"Job {job.id}: {job.name}"]
    out += [f"  {(k + ':').ljust(width)}{v}" for k, v in fields]
    out.append("")
    if latest is None:
        out.append("No processes recorded yet.")
    else:
        rows = [[str(p.procs_id), p.host or "-", str(p.pid) if p.pid is not None else "-",
                 p.role or "-", p.state, fmt.ago(p.heartbeat, now),
                 str(p.step) if p.step is not None else "-",
                 jobdb.describe_exit(p.exit_code, p.signal, running=p.state == jobdb.RUNNING),
                 jobdb.show_path(p.log_path) if p.log_path else "-"]
                for p in attempts[latest]]
        out.append(f"Processes (attempt {latest}):")
        out.append(fmt.table(["PROCS", "HOST", "PID", "ROLE", "STATE", "HEARTBEAT", "STEP", "EXIT",
                           "LOG"], rows))
        earlier = sorted(a for a in attempts if a != latest)
        if earlier:
            out.append("")
            out.append("Earlier attempts:")
            out += [f"  attempt {a}: {_attempt_summary(attempts[a])}" for a in earlier]
        if job.state in (jobdb.FAILED, jobdb.LOST):
            failed = [p for p in attempts[latest] if p.state == jobdb.FAILED]
            if failed:
                out.append("")
                out += _failing_tail(job, failed[0])
    return "\n".join(out)


def _view(job_id: int, as_json: bool) -> None:
    with jobdb.JobDB() as reg:
        job = reg.reconcile(reg.job(job_id))
        procs = reg.all_procs(job.id)
    if as_json:
        latest = max((p.attempt for p in procs), default=None)
        doc: dict[str, Any] = {
            "job": job.public_dict(),
            "procs": [p.as_dict() for p in procs if p.attempt == latest],
            "earlier_procs": [p.as_dict() for p in procs if p.attempt != latest],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(_render_view(job, procs, time.time()))


_JOB_ARG = click.argument("job_id", metavar="JOB", type=int)
_JSON_OPT = click.option("--json", "as_json", is_flag=True,
                         help="Print the job and its processes as one JSON object.")


@click.command("view")
@_JOB_ARG
@_JSON_OPT
def view(job_id: int, as_json: bool) -> None:
    """Show a job, each of its processes, and why it failed."""
    _view(job_id, as_json)


@click.command("status")
@_JOB_ARG
@_JSON_OPT
def status(job_id: int, as_json: bool) -> None:
    """Same as view: show a job and its processes."""
    _view(job_id, as_json)
