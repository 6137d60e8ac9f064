"""The queue in the registry: one pass of the scheduler's rules over the rows.

`run_pass(db)` reads every active job, asks `runtime.jobs.scheduler.plan`
what to do, and writes it: QUEUED -> PENDING for the jobs admitted (their
masters, waiting on the registry, see it and launch), QUEUED -> CANCELLED
for a dependency that can no longer hold, and the reason each other queued
job waits. It runs inside the caller's write transaction (`JobDB.write`),
which is the lock: no daemon, and two passes never hand out the same cores.

The registry runs a pass whenever the set of held resources may have
changed: a job submitted, a job ended (its slots pass on at once), a master
found LOST, an ended job's processes stopped (`JobDB.release`). Waiting
masters run one now and then as well (`JobDB.schedule`), which also covers
a hold that ran out (`held_until`),
so the queue moves even when whoever ended a job could not run it.

A QUEUED job with an `external_id` waits in another resource manager's
queue (Slurm's: its master mirrors Slurm's pending state and reason, see
`runtime.jobs.slurm`): the pass leaves it alone, as if held. It asks for
nothing here, and neither its state nor its reason is the pass's to write.

What a job asks for is its `demand` column, `{host: {"cores", "mem",
"procs", "threads"}}`, written at submit (`runtime.jobs.resources`); the
capacity it saw is `options["capacity"]`, `{host: {"cores", "mem"}}`.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

from runtime.jobs import scheduler, states

_ACTIVE_SQL = states.sql_set(states.ACTIVE)


def _json(text: str | None, empty: Any) -> Any:
    try:
        return json.loads(text) if text else empty
    except ValueError:
        return empty  # a damaged cell asks for nothing; jobdb reports it when the row is read


def demand_of(text: str | None) -> dict[str, scheduler.Ask]:
    """The scheduler's view of a `demand` column."""
    return {h: scheduler.Ask(int(d.get("cores", 0)), int(d.get("mem", 0)))
            for h, d in _json(text, {}).items()}


def capacity_of(options: str | None) -> dict[str, scheduler.Capacity]:
    """The scheduler's view of the capacity recorded in an `options` column."""
    caps = _json(options, {}).get("capacity", {})
    return {h: scheduler.Capacity(int(c["cores"]), None if c.get("mem") is None else int(c["mem"]))
            for h, c in caps.items()}


def _eta(state: str, started: float | None, step: int | None, steps: int | None,
         now: float) -> float:
    """When a running job is expected to end, from its progress (inf: not known)."""
    if state != "RUNNING" or not started or not step or not steps or step <= 0:
        return math.inf
    return started + (now - started) * steps / step


def entries(db: Any, now: float | None = None) -> tuple[list[scheduler.Entry],
                                                        dict[int, scheduler.Parent]]:
    """Every active job as a scheduler Entry, and the jobs queued ones depend on."""
    now = time.time() if now is None else now
    # an ended job whose processes are still being stopped holds its slots (held_until)
    rows = db.execute("SELECT id, CASE WHEN state IN " + _ACTIVE_SQL + " THEN state ELSE 'RUNNING' "
                      "END, demand, options, priority, after, started, step, train_steps FROM jobs "
                      f"WHERE (state IN {_ACTIVE_SQL} OR held_until > ?) "
                      # queued in an engine's queue (Slurm), not in ours: left alone
                      "AND NOT (state = 'QUEUED' AND external_id IS NOT NULL) ORDER BY id",
                      (now,)).fetchall()
    jobs = [scheduler.Entry(id=r[0], state=r[1], demand=demand_of(r[2]), capacity=capacity_of(r[3]),
                            priority=int(r[4] or 0),
                            after=[(int(p), str(m)) for p, m in _json(r[5], [])],
                            eta=_eta(r[1], r[6], r[7], r[8], now))
            for r in rows]
    wanted = sorted({p for j in jobs for p, _ in j.after})
    parents: dict[int, scheduler.Parent] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i:i + 500]
        marks = ", ".join("?" * len(chunk))
        for pid, state, name in db.execute(f"SELECT id, state, name FROM jobs WHERE id IN ({marks})",
                                           chunk).fetchall():
            parents[pid] = scheduler.Parent(state, name)
    return jobs, parents


def current(db: Any) -> tuple[scheduler.Plan, dict[int, str]]:
    """The plan for the registry as it is, and each queued job's recorded reason."""
    jobs, parents = entries(db)
    reasons = dict(db.execute("SELECT id, reason FROM jobs WHERE state = 'QUEUED'").fetchall())
    return scheduler.plan(jobs, parents), reasons


def stale(db: Any) -> bool:
    """True if a pass would change something (read only: no lock taken)."""
    plan, reasons = current(db)
    return plan.changes or any(reasons.get(i) != why for i, why in plan.waiting.items())


def run_pass(db: Any) -> scheduler.Plan:
    """One pass, inside the caller's write transaction; returns what it did."""
    plan, reasons = current(db)
    now = time.time()
    for job_id in plan.admit:
        db.execute("UPDATE jobs SET state = 'PENDING', reason = '', admitted = ? "
                   "WHERE id = ? AND state = 'QUEUED'", (now, job_id))
    for job_id, why in plan.cancel.items():
        db.execute("UPDATE jobs SET state = 'CANCELLED', reason = ?, ended = ? "
                   "WHERE id = ? AND state = 'QUEUED'", (why, now, job_id))
    for job_id, why in plan.waiting.items():
        if reasons.get(job_id) != why:
            db.execute("UPDATE jobs SET reason = ? WHERE id = ? AND state = 'QUEUED'", (why, job_id))
    return plan
