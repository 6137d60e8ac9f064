"""The queue's rules, without IO: which queued jobs start now, which can
never start, and why each other one waits.

`plan(jobs, parents)` is called by the registry (`runtime.jobs.queue`) inside
a write transaction, with every active job; what it returns is applied in
that same transaction, so two processes never admit against the same free
cores.

The rules (the README's "Queue" section says them to users):

1. **Resources.** A job asks, on each host it spans, for cores (the BLAS
   threads of its processes there, at least one each) and memory (validate's
   estimate). It is admitted when, on every one of those hosts, what the
   admitted jobs (PENDING or RUNNING) hold plus its own ask fits in the
   host's slots and memory. A host's capacity is the one the job was
   submitted with (its hostfile, `$SINGA_HOME/hosts`, or this host).
2. **Order.** Queued jobs are taken by `--priority` (higher first), then in
   the order they were submitted (FIFO).
3. **Backfill.** The first job in that order that does not fit is the head.
   It reserves what it needs: the running jobs are taken in the order they
   are expected to end (from their progress), until the head would fit; what
   the head would leave free then is the spare. A later job starts now only
   if it fits in what is free now *and* in the spare, so it never takes a
   core or a byte the head is waiting for: it cannot delay the head.
4. **Dependencies.** A job with `--after P:ok` waits until job P has ended
   SUCCEEDED, with `--after P:any` until P has ended at all; it is not in
   the line for resources before then. When P ends otherwise (`:ok`; a
   CANCELLED P too, so a chain is cancelled down to its end), the job is
   CANCELLED and never starts.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from runtime.jobs.states import ADMITTED, CANCELLED, QUEUED, SUCCEEDED, TERMINAL
from runtime.units import human_bytes

#: `--after` conditions: Slurm's afterok and afterany.
AFTER_MODES = ("ok", "any")


@dataclass(frozen=True)
class Ask:
    """What a job holds (or asks for) on one host."""

    cores: int
    mem: int = 0


@dataclass(frozen=True)
class Capacity:
    """A host's slots (cores) and memory in bytes (None: not accounted)."""

    cores: int
    mem: int | None = None


@dataclass
class Entry:
    """One active job as the rules see it.

    `demand`: host -> Ask; `capacity`: host -> Capacity as the job sees it;
    `after`: [(parent job id, "ok" or "any")]; `eta`: when a running job is
    expected to end (seconds since the epoch; inf when not known).
    """

    id: int
    state: str
    demand: dict[str, Ask]
    capacity: dict[str, Capacity] = field(default_factory=dict)
    priority: int = 0
    after: list[tuple[int, str]] = field(default_factory=list)
    eta: float = math.inf


@dataclass(frozen=True)
class Parent:
    """A job another depends on: its state and name (for the reasons)."""

    state: str
    name: str


@dataclass
class Plan:
    """What to do: admit (QUEUED -> PENDING), cancel (-> CANCELLED with the
    reason), and the reason each job left queued waits, in queue order."""

    admit: list[int] = field(default_factory=list)
    cancel: dict[int, str] = field(default_factory=dict)
    waiting: dict[int, str] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.admit or self.cancel)


def order(jobs: Iterable[Entry]) -> list[Entry]:
    """Queued jobs in queue order: priority (higher first), then submission (id)."""
    return sorted((j for j in jobs if j.state == QUEUED), key=lambda j: (-j.priority, j.id))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class _Pool:
    """What is held on each host, and what a job's view of the hosts leaves free."""

    def __init__(self, admitted: Iterable[Entry]):
        self.cores: dict[str, int] = {}
        self.mem: dict[str, int] = {}
        for j in admitted:
            self.take(j.demand)

    def take(self, demand: dict[str, Ask], sign: int = 1) -> None:
        for h, a in demand.items():
            self.cores[h] = self.cores.get(h, 0) + sign * a.cores
            self.mem[h] = self.mem.get(h, 0) + sign * a.mem

    def free(self, job: Entry, host: str) -> tuple[float, float]:
        """(free cores, free bytes) on `host` as `job` sees its capacity."""
        cap = job.capacity.get(host)
        if cap is None:  # a host it has no view of: only what it asks counts
            return math.inf, math.inf
        mem = math.inf if cap.mem is None else cap.mem - self.mem.get(host, 0)
        return cap.cores - self.cores.get(host, 0), mem

    def shortfall(self, job: Entry) -> list[str]:
        """What `job` lacks now, per host: ["2 cores on localhost", ...]; [] if it fits."""
        out = []
        for h, a in job.demand.items():
            cores, mem = self.free(job, h)
            if a.cores > cores:
                out.append(f"{_plural(int(a.cores - max(cores, 0)), 'core')} on {h}")
            if a.mem > mem:
                out.append(f"{human_bytes(a.mem - max(mem, 0))} of memory on {h}")
        return out


def _reservation(head: Entry, pool: _Pool, running: list[Entry]) -> dict[str, tuple[float, float]]:
    """The head's spare, per host it asks for: what would be left free once
    enough running jobs (soonest expected end first) ended for it to fit.
    A host the head does not ask for is not limited by it (absent)."""
    later = _Pool([])
    later.cores, later.mem = dict(pool.cores), dict(pool.mem)
    for j in sorted(running, key=lambda j: (j.eta, j.id)):
        if not later.shortfall(head):
            break
        later.take(j.demand, -1)
    spare: dict[str, tuple[float, float]] = {}
    for h, a in head.demand.items():
        cores, mem = later.free(head, h)
        spare[h] = (max(0, cores - a.cores), max(0.0, mem - a.mem))
    return spare


def _dependency(job: Entry, parents: dict[int, Parent],
                cancelled: dict[int, str]) -> tuple[str | None, str | None]:
    """(cancel reason, wait reason) of `job`'s dependencies; (None, None) when met."""
    waits = []
    for pid, mode in job.after:
        p = parents.get(pid)
        state = CANCELLED if pid in cancelled else (p.state if p else None)
        name = f"job {pid}" + (f" ({p.name})" if p and p.name else "")
        if state is None:
            return f"--after {pid}: no such job", None
        if mode == "ok" and state in TERMINAL and state != SUCCEEDED:
            return (f"{name} ended {state}, so --after {pid}:{mode} can no longer hold"
                    f"{'' if mode == 'any' else ' (it needs SUCCEEDED)'}"), None
        if state not in TERMINAL:
            waits.append(f"{name} to {'succeed' if mode == 'ok' else 'end'}")
    return None, ("waiting for " + " and ".join(waits)) if waits else None


def plan(jobs: list[Entry], parents: dict[int, Parent]) -> Plan:
    """Apply the rules (module docstring) to the active jobs `jobs`; `parents`
    gives the state of every job some queued job depends on."""
    out = Plan()
    queue = order(jobs)
    # dependencies first, to a fixed point: a cancelled job cancels its own dependents
    blocked: dict[int, str] = {}
    changed = True
    while changed:
        changed = False
        for j in queue:
            if j.id in out.cancel:
                continue
            cancel, wait = _dependency(j, parents, out.cancel)
            if cancel is not None:
                out.cancel[j.id] = cancel
                blocked.pop(j.id, None)
                changed = True
            elif wait is not None:
                blocked[j.id] = wait
    running = [j for j in jobs if j.state in ADMITTED]
    pool = _Pool(running)
    head: Entry | None = None
    spare: dict[str, tuple[float, float]] = {}
    ahead = 0  # eligible jobs before this one that are left waiting
    for j in queue:
        if j.id in out.cancel:
            continue
        if j.id in blocked:
            out.waiting[j.id] = blocked[j.id]
            continue
        short = pool.shortfall(j)
        if head is None:
            if not short:
                out.admit.append(j.id)
                pool.take(j.demand)
                continue
            head = j
            spare = _reservation(j, pool, running)
            out.waiting[j.id] = "waiting for " + " and ".join(short) + "; next in line"
            ahead = 1
            continue
        if not short and all(a.cores <= spare[h][0] and a.mem <= spare[h][1]
                             for h, a in j.demand.items() if h in spare):
            out.admit.append(j.id)  # backfill: it takes nothing the head waits for
            pool.take(j.demand)
            for h, a in j.demand.items():
                if h in spare:
                    spare[h] = (spare[h][0] - a.cores, spare[h][1] - a.mem)
            continue
        why = ("waiting for " + " and ".join(short)) if short else \
            f"waiting behind job {head.id}, which needs these resources first"
        out.waiting[j.id] = f"{why}; {_plural(ahead, 'job')} ahead"
        ahead += 1
    return out
