"""Following a submitted job on a terminal: what `singa submit` (without
--detach) and `Driver.submit` do once runtime.jobs.submit has returned the
job's id.

`follow(reg, job_id)` streams the log of process 0 (on any host) to stdout,
with a live progress line at the bottom of stderr when stderr is a terminal,
until the job ends; then it writes the end report (the state, and for a
failure the end of the failing process's log) and returns the exit code of
`singa submit`: 0 only if the job SUCCEEDED, 130 if interrupted, else 1.
Ctrl-C (or TERM) while following stops the job.

This module writes to a terminal; it reads the job only through the
registry (runtime.jobs.jobdb) and the logs (runtime.jobs.logs), so a front
end (the CLI, the Driver of a user's main) can use it and runtime's library
modules need not know about terminals.
"""
from __future__ import annotations

import shutil
import signal
import sys
import time
from types import FrameType
from typing import TextIO

from runtime.errors import UserError
from runtime.jobs import jobdb
from singa_cli import fmt


def follow(reg: jobdb.JobDB, job_id: int, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
           grace: float = 5.0) -> int:
    """Stream process 0's log until the job ends; Ctrl-C or TERM stops the job."""
    from runtime.jobs import logs

    tty = err.isatty()
    status = Status(err) if tty else None
    interrupted = False
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        attempt = 0
        reader = None
        queued = ""
        while True:
            job = reg.reconcile(reg.job(job_id))
            if job.state == jobdb.QUEUED and job.reason and job.reason != queued:
                queued = job.reason  # said once per change: a queue may be long
                if status is not None:
                    status.clear()
                print(f"singa: job {job_id} QUEUED: {job.reason}", file=err, flush=True)
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
                    for line in server_lines(job, procs[1:]):
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
    return report_end(reg, job, err, interrupted)


def server_lines(job: jobdb.Job, procs: list[jobdb.Proc]) -> list[str]:
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


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _emit(line: str, out: TextIO, status: Status | None) -> None:
    if status is not None:
        status.clear()
    out.write(line if line.endswith("\n") else line + "\n")
    out.flush()


def report_end(reg: jobdb.JobDB, job: jobdb.Job, err: TextIO, interrupted: bool) -> int:
    """Write how the job ended to `err` (for a failure, the end of the failing
    process's log when it is not process 0's, which was streamed) and return
    the exit code: 0 only if it SUCCEEDED, 130 if interrupted, else 1."""
    took = fmt.dur(job.elapsed, missing="0:00:00")
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


class Status:
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
                left = eta(job)
                if left is not None:
                    parts.append(f"ETA {fmt.dur(left)}")
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.err.write("\r\x1b[K" + "  ".join(parts)[:width])
        self.err.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self.shown = False


def eta(job: jobdb.Job) -> float | None:
    """Seconds left, from the steps done so far and the time they took."""
    if not job.started or not job.step or not job.train_steps:
        return None
    rate = job.step / max(1e-9, time.time() - job.started)
    return (job.train_steps - job.step) / rate if rate > 0 else None
