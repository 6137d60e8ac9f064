"""The cluster's resources: which hosts there are, what each has, and what a
job asks of them.

- **Hosts.** With no configuration the cluster is this host: its cores (the
  CPUs this process may run on) and its memory (psutil). A file
  `$SINGA_HOME/hosts`, in any hostfile dialect (`runtime.jobs.hostfile`,
  `slots=` cores and `mem=` memory), names the default hosts instead;
  `-H`/`--hosts` still choose a job's hosts. A host's slots are its cores.
- **Asks.** Each process of a job needs the cores its BLAS threads will run
  on, at least one: `--cores`, else the conf's `num_openblas_threads` when
  it sets one, else `DEFAULT_CORES_PER_PROC`; and its estimated memory
  (validate's, `runtime.config.memory`). On each host the job asks for
  what its processes there need, but never more than the host has: a job
  bigger than a host (more processes than cores) takes the whole host and
  its processes share it, one thread each; it never oversubscribes others.

Host names are keyed as the registry accounts them: this host, under any
of its names, is `localhost`; others by their lower-case name, an IP
address in its canonical form (so `fd00:0::5` and `[FD00::5]` are one
host). Names are not resolved: `node2` and its address are two keys, so a
cluster should name each host one way in all its hostfiles.

- **Usage.** `usage(cluster, jobs)` is what `singa hosts` shows: each host
  with its capacity, what the admitted jobs hold there and which queued
  jobs ask for it.
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.jobs import hostfile

LOCAL = "localhost"

#: Cores a process gets when neither `--cores` nor the conf says: one.
#: Measured by bench/concurrent.py on 2 cores (4 LeNet jobs at once, see
#: the README's "Queue"): one core each packs two jobs side by side and
#: finishes the four in about 0.6x the time of running them one after
#: another with both cores each, because a small net's BLAS calls gain
#: only ~1.1x from a second thread; giving each job the whole host makes
#: the queue run them one at a time (1.0x).
DEFAULT_CORES_PER_PROC = 1

HOSTS_FILE = "hosts"


def host_key(name: str) -> str:
    """The registry's name for `name`: `localhost` for this host; an IP address
    in canonical form (brackets and an IPv6 zone dropped); else lower case."""
    if hostfile.is_local(name):
        return LOCAL
    key = name.strip().lower()
    bare = key[1:-1] if key.startswith("[") and key.endswith("]") else key
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0]).compressed
    except ValueError:
        return key


def local_cores() -> int:
    """The CPUs this process may run on (its affinity, so a cgroup or taskset counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_memory() -> int:
    """Bytes of memory of this host."""
    import psutil

    return int(psutil.virtual_memory().total)


def this_host() -> hostfile.Host:
    """This host with its own cores and memory."""
    return hostfile.Host(LOCAL, local_cores(), "this host", local_memory())


def hosts_file(home: Path) -> Path:
    return Path(home) / HOSTS_FILE


def default_hosts(home: Path) -> list[hostfile.Host]:
    """The cluster when a job names no hosts: `$SINGA_HOME/hosts`, else this host."""
    path = hosts_file(home)
    if path.exists():
        return hostfile.parse_hostfile(str(path))
    return [this_host()]


def capacity(hosts: list[hostfile.Host]) -> dict[str, dict[str, Any]]:
    """host key -> {"cores", "mem"} (mem None: not accounted) of `hosts`. This
    host's memory is its own unless `mem=` says less.

    Entries with one key (this host as `localhost` and by its address) are
    one host: their slots add up, as `hostfile.place` fills each of them,
    and its memory is the largest `mem=` given."""
    out: dict[str, dict[str, Any]] = {}
    for h in hosts:
        key = host_key(h.name)
        seen = out.get(key)
        cores = int(h.slots) + (seen["cores"] if seen else 0)
        mems = [m for m in (h.mem, seen["given"] if seen else None) if m is not None]
        out[key] = {"cores": cores, "given": max(mems) if mems else None}
    for key, c in out.items():
        mem = c.pop("given")
        if key == LOCAL:
            mem = local_memory() if mem is None else min(mem, local_memory())
        c["mem"] = mem
    return out


def cores_per_proc(job: Any, requested: int | None) -> int:
    """Cores (BLAS threads) each process asks for (module docstring)."""
    if requested is not None:
        return max(1, int(requested))
    if job.HasField("num_openblas_threads"):
        return max(1, int(job.num_openblas_threads))
    return DEFAULT_CORES_PER_PROC


def demand(placement: list[str], cores: int, mem_per_proc: list[int],
           caps: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """host key -> {"cores", "mem", "procs", "threads"}: what the job holds on
    each host once admitted. `placement[p]` is process p's host,
    `mem_per_proc[p]` its estimated bytes (missing: 0), `caps` the capacity
    the job sees (a host missing from it is not limited)."""
    out: dict[str, dict[str, int]] = {}
    for p, host in enumerate(placement):
        d = out.setdefault(host_key(host), {"cores": 0, "mem": 0, "procs": 0, "threads": 0})
        d["procs"] += 1
        d["cores"] += cores
        d["mem"] += mem_per_proc[p] if p < len(mem_per_proc) else 0
    for key, d in out.items():
        cap = caps.get(key)
        if cap is not None:
            d["cores"] = min(d["cores"], int(cap["cores"]))
            if cap.get("mem") is not None:
                d["mem"] = min(d["mem"], int(cap["mem"]))
        d["threads"] = max(1, d["cores"] // d["procs"])
    return out


@dataclass
class HostUsage:
    """One host as `singa hosts` shows it.

    `cores`/`mem`: its capacity (None: not known, or memory not accounted);
    `used_cores`/`used_mem`: what the admitted (PENDING, RUNNING) jobs hold
    there; `jobs`: those jobs, `waiting`: the QUEUED ones that ask for it,
    each {"id", "name", "state", "cores", "mem", "procs"}, by job id.
    """

    host: str
    cores: int | None
    mem: int | None
    used_cores: int = 0
    used_mem: int = 0
    jobs: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "slots": self.cores, "mem": self.mem,
                "used_slots": self.used_cores, "used_mem": self.used_mem,
                "jobs": self.jobs, "waiting": self.waiting}


_ADMITTED = ("PENDING", "RUNNING")


def usage(cluster: dict[str, dict[str, Any]], jobs: Iterable[Any]) -> list[HostUsage]:
    """Every host of `cluster` (`capacity(default_hosts(home))`), in its
    order, then every other host an active job of `jobs` holds or asks for,
    in the order the jobs (by id) name them.

    `jobs` are registry rows (`jobdb.Job`: id, name, state, demand, options);
    ended ones are ignored. A host outside `cluster` has the capacity the
    newest job that names it saw (`options["capacity"]`): each job is
    admitted against its own view, and the newest is the most current."""
    rows: dict[str, HostUsage] = {
        h: HostUsage(h, int(c["cores"]), None if c.get("mem") is None else int(c["mem"]))
        for h, c in cluster.items()}
    for job in sorted(jobs, key=lambda j: j.id):
        if job.state not in (*_ADMITTED, "QUEUED"):
            continue
        caps = (job.options or {}).get("capacity") or {}
        for h in [*job.demand, *caps]:
            if h not in rows:
                rows[h] = HostUsage(h, None, None)
            if h not in cluster and h in caps:
                row, c = rows[h], caps[h]
                row.cores = int(c["cores"])
                row.mem = None if c.get("mem") is None else int(c["mem"])
        for h, d in job.demand.items():
            entry = {"id": job.id, "name": job.name, "state": job.state,
                     "cores": int(d.get("cores", 0)), "mem": int(d.get("mem", 0)),
                     "procs": int(d.get("procs", 0))}
            row = rows[h]
            if job.state in _ADMITTED:
                row.used_cores += entry["cores"]
                row.used_mem += entry["mem"]
                row.jobs.append(entry)
            else:
                row.waiting.append(entry)
    return list(rows.values())
