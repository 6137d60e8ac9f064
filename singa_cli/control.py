"""`singa kill` and `singa log`: act on a submitted job by its id."""
from __future__ import annotations

import sys
import time

import click


@click.command()
@click.argument("job_id", type=int)
@click.option("--grace", type=float, default=10.0, show_default=True,
              help="Seconds between TERM and KILL.")
def kill(job_id: int, grace: float) -> None:
    """Stop a job: TERM to each process group on every host, KILL after the grace."""
    from runtime.jobs import jobdb
    from runtime.jobs.kill import kill_job

    reg = jobdb.JobDB()
    job = reg.reconcile(reg.job(job_id))
    if job.terminal:
        click.echo(f"job {job_id} has already ended: {job.state}")
        return
    problems = kill_job(reg, job_id, grace)
    for p in problems:
        click.echo(f"singa: kill: {p}; processes may be left there", err=True)
    click.echo(f"job {job_id} KILLED")
    sys.exit(1 if problems else 0)


@click.command()
@click.argument("job_id", type=int)
@click.option("--proc", "procs_id", type=int, default=None,
              help="Process id (default: the first that failed, else 0).")
@click.option("--attempt", type=int, default=None, help="Attempt (default: the latest).")
@click.option("--master", is_flag=True, help="The job master's log instead.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing lines as they come, until the job ends.")
@click.option("--tail", "-n", "ntail", type=int, default=None, help="Only the last N lines.")
def log(job_id: int, procs_id: int | None, attempt: int | None, master: bool, follow: bool,
        ntail: int | None) -> None:
    """Print a job process's log, from its host (over ssh when remote)."""
    from pathlib import Path

    from runtime.errors import UserError
    from runtime.jobs import jobdb, logfile, logs

    reg = jobdb.JobDB()
    job = reg.reconcile(reg.job(job_id))
    if master:
        path = Path(job.log_dir) / "master.log"
        for line in logfile.tail(path, ntail if ntail is not None else 10**9):
            click.echo(line)
        return
    procs = reg.procs(job_id, attempt)
    while follow and not procs and not job.terminal:  # just submitted: wait for its launch
        time.sleep(0.1)
        job = reg.reconcile(reg.job(job_id))
        procs = reg.procs(job_id, attempt)
    if not procs:
        raise UserError(f"job {job_id} has no processes yet ({job.state})"
                        + (f" in attempt {attempt}" if attempt else ""))
    if procs_id is None:
        proc = next((p for p in procs if p.state == jobdb.FAILED), procs[0])
    else:
        chosen = next((p for p in procs if p.procs_id == procs_id), None)
        if chosen is None:
            raise UserError(f"job {job_id} has no process {procs_id}; it has "
                            f"{', '.join(str(p.procs_id) for p in procs)}")
        proc = chosen
    if not follow:
        for line in logs.tail(job, proc, ntail if ntail is not None else 10**9):
            click.echo(line)
        return
    if ntail is not None:
        for line in logs.tail(job, proc, ntail):
            click.echo(line)
    reader = logs.reader(job, proc, from_start=ntail is None)
    try:
        while True:
            for line in reader.read():
                click.echo(line)
            if reg.reconcile(reg.job(job_id)).terminal:
                for line in reader.drain():
                    click.echo(line)
                # A log that is not there (removed, or never written) is the error it is
                # without -f, not an empty success.
                logs.tail(job, proc, 1)
                return
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
