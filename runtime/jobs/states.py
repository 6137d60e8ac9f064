"""A job's states, in one place: the registry (`runtime.jobs.jobdb`), the
queue's rules (`runtime.jobs.scheduler`) and its SQL (`runtime.jobs.queue`)
all read them from here. Standard library only (on `singa list`'s path)."""
from __future__ import annotations

QUEUED = "QUEUED"        # waiting for resources or a dependency (runtime.jobs.scheduler)
PENDING = "PENDING"      # admitted: its master is launching its processes
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
KILLED = "KILLED"
LOST = "LOST"
CANCELLED = "CANCELLED"  # a dependency that can no longer hold; it never started

STATES: tuple[str, ...] = (QUEUED, PENDING, RUNNING, SUCCEEDED, FAILED, KILLED, LOST, CANCELLED)
TERMINAL: frozenset[str] = frozenset({SUCCEEDED, FAILED, KILLED, LOST, CANCELLED})
ACTIVE: frozenset[str] = frozenset({QUEUED, PENDING, RUNNING})
#: the states in which a job holds what it asked for
ADMITTED: frozenset[str] = frozenset({PENDING, RUNNING})


def sql_set(states: frozenset[str]) -> str:
    """`states` as an SQL list literal, e.g. "('PENDING', 'RUNNING')"."""
    return "(" + ", ".join(f"'{s}'" for s in sorted(states)) + ")"
