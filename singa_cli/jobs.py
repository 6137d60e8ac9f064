"""`singa list` and `singa view JOB` (alias `singa status JOB`): what the registry knows.

Both reconcile first: a job whose master has died is shown LOST, never a stale
RUNNING. Both are on a user's hot path (`watch singa list`), so this module
imports only click, the standard library and `runtime.jobs.jobdb`/`logfile`:
no numpy, protobuf or zmq (see tests/cli/test_jobs_cli.py and bench/registry_list.py).
Secrets (`jobs.secret`) and the conf text are never printed, not even with --json.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import click

from runtime.errors import UserError
from runtime.jobs import jobdb

TAIL_LINES = 20
_HOSTS_WIDTH = 28


# -- formatting ----------------------------------------------------------------------------

def _ts(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    d = max(0.0, now - t)
    if d < 60:
        return f"{d:.1f}s ago"
    if d < 3600:
        return f"{int(d) // 60}m{int(d) % 60:02d}s ago"
    return f"{int(d) // 3600}h{int(d) // 60 % 60:02d}m ago"


def _short_host(h: str) -> str:
    """`node1.cluster.example.org` -> `node1`; IP addresses stay whole."""
    if h.replace(".", "").isdigit() or ":" in h:
        return h
    return h.split(".", 1)[0]


def _hosts(hosts: Sequence[str], width: int = _HOSTS_WIDTH) -> str:
    """Distinct short host names in order, comma-joined; `+N` for those that do not fit."""
    names = list(dict.fromkeys(_short_host(h) for h in hosts if h))
    if not names:
        return "-"
    out, shown = names[0], 1
    for n in names[1:]:
        rest = len(names) - shown - 1  # names left out if this one is added
        if len(out) + 1 + len(n) + (len(f" +{rest}") if rest else 0) > width:
            break
        out += "," + n
        shown += 1
    rest = len(names) - shown
    return out + (f" +{rest}" if rest else "")


def _step(step: int | None, total: int | None) -> str:
    s = "-" if step is None else str(step)
    return s if not total else f"{s}/{total}"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header, *rows])


def _is_local(host: str | None) -> bool:
    """True if `host` names this machine (as the launcher wrote it in the hostfile)."""
    from runtime.jobs.hostfile import is_local  # noqa: PLC0415 - only when a log is to be read

    return not host or is_local(host)


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
    return [str(j.id), j.name or "-", j.state, str(j.nprocs if j.nprocs is not None else "-"),
            _hosts(j.hosts), _step(j.step, j.train_steps), _ts(j.started), _dur(j.elapsed)]


@click.command("list")
@click.option("--all", "show_all", is_flag=True, help="Every job, ended ones too.")
@click.option("--state", "states", multiple=True, callback=_parse_states, metavar="STATE",
              help="Only jobs in STATE (PENDING, RUNNING, SUCCEEDED, FAILED, KILLED, LOST); "
                   "repeatable or comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as a JSON list.")
def list_jobs(show_all: bool, states: list[str], as_json: bool) -> None:
    """List jobs: the active ones (PENDING, RUNNING) unless --all or --state."""
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
    click.echo(_table(header, [_list_row(j) for j in jobs]))


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
        if _is_local(p.host):
            lines = _local_tail(p.log_path)
        else:
            from runtime.jobs import logs  # noqa: PLC0415 - ssh only when a log is remote

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
    from runtime.jobs import logfile  # noqa: PLC0415

    return logfile.tail(path, TAIL_LINES)


def _progress(job: jobdb.Job) -> str:
    parts = [f"step {_step(job.step, job.train_steps)}"]
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
        ("submitted", _ts(job.submitted)),
        ("started", _ts(job.started)),
        ("ended", _ts(job.ended)),
        ("elapsed", _dur(job.elapsed)),
        ("workspace", job.workspace or "-"),
        ("log dir", jobdb.show_path(job.log_dir) if job.log_dir else "-"),
        ("launcher", job.launcher or "-"),
        ("hosts", _host_counts(job.hosts)),
        ("progress", _progress(job)),
    ]
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
                 p.role or "-", p.state, _ago(p.heartbeat, now),
                 str(p.step) if p.step is not None else "-",
                 jobdb.describe_exit(p.exit_code, p.signal, running=p.state == jobdb.RUNNING),
                 jobdb.show_path(p.log_path) if p.log_path else "-"]
                for p in attempts[latest]]
        out.append(f"Processes (attempt {latest}):")
        out.append(_table(["PROCS", "HOST", "PID", "ROLE", "STATE", "HEARTBEAT", "STEP", "EXIT",
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
