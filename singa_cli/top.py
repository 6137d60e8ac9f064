"""`singa top JOB [--interval S] [--once]`: a live table of a running job's processes.

One row per process of the latest attempt: host, pid, role, state, step,
steps/s and samples/s, CPU and resident memory (psutil, for processes on this
host; `-` for remote ones), and the age of its last heartbeat. A process whose
workers go at less than half the median speed of the job's worker processes
is flagged a straggler (it takes more than twice as long per step).

Speeds come from the steps the job master records with each heartbeat (at
most once a second per process), over the last `WINDOW_S` seconds of
refreshes; before there are two samples (always with `--once`) they come from
the metrics stream: the step rate of each worker group between its last two
train records. Samples/s is a process's share of its group's batch: the
train batchsize times the fraction of the group's workers it hosts, per step.

The table is redrawn every `--interval` seconds until the job ends (the last
table is left on the screen) or Ctrl-C; `--once` prints one table and exits
(exit 0, also for an ended job).
"""
from __future__ import annotations

import re
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import click

from runtime.jobs import jobdb
from singa_cli import fmt

WINDOW_S = 10.0
CPU_SAMPLE_S = 0.5
_WORKER = re.compile(r"worker (\d+)/(\d+)")


def workers_of(role: str | None) -> list[tuple[int, int]]:
    """The (group, worker) pairs named in a process's role ("worker 0/1, server 0/0")."""
    return [(int(g), int(w)) for g, w in _WORKER.findall(role or "")]


def group_rates(records: list[dict]) -> dict[int, float]:
    """Steps per second of each worker group, between its last two train records."""
    last: dict[int, list[tuple[float, int]]] = {}
    for r in records:
        if r.get("phase") == "train" and "step" in r and "time" in r:
            pts = last.setdefault(int(r.get("group", 0) or 0), [])
            pts.append((float(r["time"]), int(r["step"])))
            del pts[:-2]
    out = {}
    for g, pts in last.items():
        if len(pts) == 2 and pts[1][0] > pts[0][0] and pts[1][1] >= pts[0][1]:
            out[g] = (pts[1][1] - pts[0][1]) / (pts[1][0] - pts[0][0])
    return out


def stragglers(rates: dict[int, float]) -> set[int]:
    """The keys whose rate is below half the median rate (need two rates or more)."""
    if len(rates) < 2:
        return set()
    med = statistics.median(rates.values())
    return {k for k, r in rates.items() if r < med / 2}


class RateTracker:
    """Steps/s per process from successive (heartbeat time, step) samples."""

    def __init__(self, window_s: float = WINDOW_S):
        self.window_s = window_s
        self._hist: dict[int, deque[tuple[float, int]]] = {}

    def observe(self, procs: list[jobdb.Proc]) -> None:
        for p in procs:
            if p.heartbeat is None or p.step is None:
                continue
            h = self._hist.setdefault(p.procs_id, deque())
            if h and h[-1][0] >= p.heartbeat:
                continue
            h.append((p.heartbeat, p.step))
            while len(h) > 2 and h[-1][0] - h[1][0] >= self.window_s:
                h.popleft()

    @property
    def sampled(self) -> bool:
        return bool(self._hist)

    def rate(self, procs_id: int) -> float | None:
        h = self._hist.get(procs_id)
        if not h or len(h) < 2 or h[-1][0] <= h[0][0]:
            return None
        return max(0, h[-1][1] - h[0][1]) / (h[-1][0] - h[0][0])


class Usage:
    """CPU % and RSS of local processes, with psutil objects kept between
    refreshes (cpu_percent measures since the previous call)."""

    def __init__(self):
        self._ps: dict[tuple[int | None, float | None], object] = {}

    def _process(self, p: jobdb.Proc):
        import psutil

        key = (p.pid, p.start_time)
        proc = self._ps.get(key)
        if proc is None:
            try:
                proc = psutil.Process(p.pid)
                if p.start_time is not None and abs(proc.create_time() - p.start_time) > 0.5:
                    return None  # the pid now belongs to another process
                proc.cpu_percent(None)  # the first call only starts the measurement
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return None
            self._ps[key] = proc
        return proc

    def prime(self, procs: list[jobdb.Proc]) -> None:
        for p in procs:
            if self._measurable(p):
                self._process(p)

    @staticmethod
    def _measurable(p: jobdb.Proc) -> bool:
        return p.pid is not None and p.state == jobdb.RUNNING and fmt.is_local(p.host)

    def read(self, p: jobdb.Proc) -> tuple[float, int] | None:
        """(CPU %, RSS bytes), or None for a remote or gone process."""
        import psutil

        if not self._measurable(p):
            return None
        proc = self._process(p)
        if proc is None:
            return None
        try:
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None  # exited, not yet reaped: nothing to measure
                return proc.cpu_percent(None), proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None


@dataclass
class Row:
    proc: jobdb.Proc
    steps_per_s: float | None = None
    samples_per_s: float | None = None
    usage: tuple[float, int] | None = None
    straggler: bool = False


@dataclass
class Snapshot:
    job: jobdb.Job
    rows: list[Row] = field(default_factory=list)
    median: float | None = None
    now: float = 0.0


def _job_shape(job: jobdb.Job) -> tuple[int, int]:
    """(train batchsize of one group, nworkers_per_group) from the job's job.pb;
    (0, 1) when it cannot be read."""
    if not job.log_dir:
        return 0, 1
    try:
        from conf import job_pb2
        from runtime.jobs.master import batch_size

        proto = job_pb2.JobProto.FromString((Path(job.log_dir) / "job.pb").read_bytes())
        return batch_size(proto), max(1, proto.cluster.nworkers_per_group)
    except Exception:  # noqa: BLE001 - the table is still useful without samples/s
        return 0, 1


def snapshot(reg: jobdb.JobDB, job_id: int, tracker: RateTracker, usage: Usage,
             shape: tuple[int, int]) -> Snapshot:
    """The job and its processes now, with speeds, usage and stragglers."""
    from runtime.jobs import metrics

    job = reg.reconcile(reg.job(job_id))
    procs = reg.procs(job_id)
    tracker.observe(procs)
    fallback: dict[int, float] | None = None
    batch, per_group = shape
    rows = []
    for p in procs:
        row = Row(p)
        ws = workers_of(p.role)
        if ws:
            row.steps_per_s = tracker.rate(p.procs_id)
            if row.steps_per_s is None:
                if fallback is None:
                    fallback = group_rates(metrics.read(job.workspace)) if job.workspace else {}
                rates = [fallback[g] for g, _ in ws if g in fallback]
                row.steps_per_s = statistics.fmean(rates) if rates else None
            if row.steps_per_s is not None and batch:
                row.samples_per_s = row.steps_per_s * batch * len(ws) / per_group
        row.usage = usage.read(p)
        rows.append(row)
    live = {r.proc.procs_id: r.steps_per_s for r in rows
            if r.steps_per_s is not None and r.proc.state == jobdb.RUNNING}
    slow = stragglers(live)
    for r in rows:
        r.straggler = r.proc.procs_id in slow
    med = statistics.median(live.values()) if live else None
    return Snapshot(job, rows, med, time.time())


def render(s: Snapshot) -> str:
    """The table of a snapshot, with a header line about the job."""
    j = s.job
    head = f"Job {j.id}: {j.name}  {j.state}  step {fmt.step(j.step, j.train_steps)}"
    if j.loss is not None:
        head += f"  loss {j.loss:.4f}"
    if j.accuracy is not None:
        head += f"  accuracy {j.accuracy:.4f}"
    lines = [head]
    if not s.rows:
        return "\n".join(lines + ["No processes recorded yet."])
    rows = []
    for r in s.rows:
        p = r.proc
        cpu, mem = ("-", "-") if r.usage is None else (f"{r.usage[0]:.0f}%", fmt.mem(r.usage[1]))
        rows.append([str(p.procs_id), fmt.short_host(p.host) if p.host else "-",
                     str(p.pid) if p.pid is not None else "-", p.role or "-", p.state,
                     str(p.step) if p.step is not None else "-", fmt.rate(r.steps_per_s),
                     fmt.rate(r.samples_per_s, 1), cpu, mem, fmt.ago(p.heartbeat, s.now),
                     "STRAGGLER" if r.straggler else ""])
    lines.append(fmt.table(["PROCS", "HOST", "PID", "ROLE", "STATE", "STEP", "STEPS/S", "SAMPLES/S",
                         "CPU", "MEM", "HEARTBEAT", ""], rows))
    slow = [r for r in s.rows if r.straggler]
    if slow:
        lines.append("")
        lines.append(f"Stragglers (slower than half the median {s.median:.2f} steps/s): "
                     + ", ".join(f"procs {r.proc.procs_id} on {r.proc.host or 'this host'} "
                                 f"({r.steps_per_s:.2f} steps/s)" for r in slow))
    return "\n".join(lines)


@click.command("top")
@click.argument("job_id", metavar="JOB", type=int)
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one table and exit.")
def top(job_id: int, interval: float, once: bool) -> None:
    """A live table of a job's processes: step, speed, CPU, memory, heartbeat, stragglers."""
    tracker, usage = RateTracker(), Usage()
    with jobdb.JobDB() as reg:
        job = reg.job(job_id)  # an unknown job is a UserError before anything is drawn
        shape = _job_shape(job)
        tty = sys.stdout.isatty()
        try:
            if once:
                usage.prime(reg.procs(job_id))
                time.sleep(CPU_SAMPLE_S)
                click.echo(render(snapshot(reg, job_id, tracker, usage, shape)))
                return
            usage.prime(reg.procs(job_id))
            while True:
                # the first table soon (CPU needs a short sample), then every interval
                time.sleep(interval if tracker.sampled else min(interval, CPU_SAMPLE_S))
                s = snapshot(reg, job_id, tracker, usage, shape)
                text = render(s)
                if tty:
                    click.echo("\x1b[H\x1b[2J" + text)  # home and clear: redraw in place
                else:
                    click.echo(text + "\n")
                if s.job.terminal:
                    click.echo(f"job {job_id} ended: {s.job.state}"
                               + (f": {s.job.reason}" if s.job.reason else ""))
                    return
        except KeyboardInterrupt:
            return
