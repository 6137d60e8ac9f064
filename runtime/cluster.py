"""Cluster topology arithmetic: which process hosts which workers and servers.

`Cluster` is a frozen view of a `ClusterProto` with SINGA's formulas
(`Cluster::Init` and `singatool genhost`, reference §5.1):

    nworker_procs = ceil(nworker_groups * nworkers_per_group / nworkers_per_procs)
    nserver_procs = ceil(nserver_groups * nservers_per_group / nservers_per_procs)
    nprocs        = nworker_procs + nserver_procs        if server_worker_separate
                    max(nworker_procs, nserver_procs)    otherwise
    procs of worker (g, w) = (g * nworkers_per_group + w) // nworkers_per_procs
    procs of server (g, s) = (g * nservers_per_group + s) // nservers_per_procs
                             + (nworker_procs if server_worker_separate else 0)
    server group of worker group g = g // (nworker_groups // nserver_groups)

SINGA divides the process counts with integer division, which drops the
last, partly filled process when the total is not a multiple (its workers
then map to a process that does not exist); here the count is rounded up so
every worker and server has a process. `problems()` lists the settings SINGA
cannot run (non-positive counts, groups that do not divide), and the
constructor does not check them: call `problems()` first, or use
`Cluster.from_proto(proto, check=True)`.

The launcher, the distributed runtime and `singa validate` share this module,
so a plan printed by `validate` is the plan that runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from conf import job_pb2
from runtime.errors import UserError

# ClusterProto fields that count something and must be >= 1.
COUNT_FIELDS = ("nworker_groups", "nserver_groups", "nworkers_per_group",
                "nservers_per_group", "nworkers_per_procs", "nservers_per_procs", "sync_freq")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Cluster:
    nworker_groups: int = 1
    nserver_groups: int = 1
    nworkers_per_group: int = 1
    nservers_per_group: int = 1
    nworkers_per_procs: int = 1
    nservers_per_procs: int = 1
    server_worker_separate: bool = False
    share_memory: bool = True
    sync_freq: int = 1
    poll_time: int = 100
    workspace: str = ""

    # ----------------------------------------------------------- create ---
    @classmethod
    def from_proto(cls, proto: job_pb2.ClusterProto, check: bool = False) -> Cluster:
        """The topology of a ClusterProto (defaults as in SINGA v0.3).

        With `check`, raise UserError listing `problems()` if there are any.
        """
        c = cls(
            nworker_groups=proto.nworker_groups,
            nserver_groups=proto.nserver_groups,
            nworkers_per_group=proto.nworkers_per_group,
            nservers_per_group=proto.nservers_per_group,
            nworkers_per_procs=proto.nworkers_per_procs,
            nservers_per_procs=proto.nservers_per_procs,
            server_worker_separate=proto.server_worker_separate,
            share_memory=proto.share_memory,
            sync_freq=proto.sync_freq,
            poll_time=proto.poll_time,
            workspace=proto.workspace,
        )
        if check:
            found = c.problems()
            if found:
                raise UserError("cluster: " + "; ".join(f"{f}: {m}" for f, m in found))
        return c

    def problems(self) -> list[tuple[str, str]]:
        """What SINGA cannot run, as (ClusterProto field, message) pairs."""
        out: list[tuple[str, str]] = []
        for f in COUNT_FIELDS:
            v = getattr(self, f)
            if v < 1:
                out.append((f, f"{f} must be >= 1, got {v}"))
        if self.poll_time < 1:
            out.append(("poll_time", f"poll_time must be >= 1 (milliseconds), got {self.poll_time}"))
        if self.nworker_groups >= 1 and self.nserver_groups >= 1 \
                and self.nworker_groups % self.nserver_groups:
            out.append(("nworker_groups",
                        f"nworker_groups ({self.nworker_groups}) must be a multiple of "
                        f"nserver_groups ({self.nserver_groups}): each server group serves "
                        "the same number of worker groups"))
        out += self._per_procs_problem("worker")
        out += self._per_procs_problem("server")
        return out

    def _per_procs_problem(self, kind: str) -> list[tuple[str, str]]:
        per_group = getattr(self, f"n{kind}s_per_group")
        per_procs = getattr(self, f"n{kind}s_per_procs")
        if per_group < 1 or per_procs < 1:
            return []
        f = f"n{kind}s_per_procs"
        if per_procs >= per_group and per_procs % per_group:
            return [(f, f"{f} ({per_procs}) is >= n{kind}s_per_group ({per_group}), so a "
                        f"process holds whole {kind} groups and it must be a multiple of "
                        f"n{kind}s_per_group (e.g. {per_procs - per_procs % per_group or per_group} "
                        f"or {per_procs - per_procs % per_group + per_group})")]
        if per_procs < per_group and per_group % per_procs:
            return [(f, f"{f} ({per_procs}) is < n{kind}s_per_group ({per_group}), so a "
                        f"process holds part of one {kind} group and n{kind}s_per_group must "
                        f"be a multiple of it (divisors of {per_group}: "
                        + ", ".join(str(d) for d in range(1, per_group + 1) if per_group % d == 0)
                        + ")")]
        return []

    # ----------------------------------------------------------- counts ---
    @property
    def nworkers(self) -> int:
        return self.nworker_groups * self.nworkers_per_group

    @property
    def nservers(self) -> int:
        return self.nserver_groups * self.nservers_per_group

    @property
    def nworker_procs(self) -> int:
        return _ceil_div(self.nworkers, self.nworkers_per_procs)

    @property
    def nserver_procs(self) -> int:
        return _ceil_div(self.nservers, self.nservers_per_procs)

    @property
    def nprocs(self) -> int:
        if self.server_worker_separate:
            return self.nworker_procs + self.nserver_procs
        return max(self.nworker_procs, self.nserver_procs)

    # ---------------------------------------------------------- mapping ---
    def procs_of_worker(self, grp: int, wid: int) -> int:
        """The process hosting worker `wid` of worker group `grp`."""
        self._check_index("worker", grp, wid, self.nworker_groups, self.nworkers_per_group)
        return (grp * self.nworkers_per_group + wid) // self.nworkers_per_procs

    def procs_of_server(self, grp: int, sid: int) -> int:
        """The process hosting server `sid` of server group `grp`."""
        self._check_index("server", grp, sid, self.nserver_groups, self.nservers_per_group)
        p = (grp * self.nservers_per_group + sid) // self.nservers_per_procs
        return p + (self.nworker_procs if self.server_worker_separate else 0)

    def workers_of_procs(self, procs: int) -> list[tuple[int, int]]:
        """The (group, worker id) pairs process `procs` hosts, in order."""
        lo = procs * self.nworkers_per_procs
        hi = min(lo + self.nworkers_per_procs, self.nworkers)
        if procs < 0 or lo >= hi:
            return []
        return [divmod(k, self.nworkers_per_group) for k in range(lo, hi)]

    def servers_of_procs(self, procs: int) -> list[tuple[int, int]]:
        """The (group, server id) pairs process `procs` hosts, in order."""
        if self.server_worker_separate:
            procs -= self.nworker_procs
        lo = procs * self.nservers_per_procs
        hi = min(lo + self.nservers_per_procs, self.nservers)
        if procs < 0 or lo >= hi:
            return []
        return [divmod(k, self.nservers_per_group) for k in range(lo, hi)]

    def server_group_of(self, worker_grp: int) -> int:
        """The server group that worker group `worker_grp` talks to."""
        if not 0 <= worker_grp < self.nworker_groups:
            raise ValueError(f"worker group {worker_grp} is not in 0..{self.nworker_groups - 1}")
        return worker_grp // (self.nworker_groups // self.nserver_groups)

    def worker_groups_of_server_group(self, server_grp: int) -> list[int]:
        """The worker groups served by server group `server_grp`."""
        k = self.nworker_groups // self.nserver_groups
        return list(range(server_grp * k, (server_grp + 1) * k))

    def initialises_params(self, worker_grp: int) -> bool:
        """Whether this worker group is the first of its server group (it puts
        the initial param values, as in SINGA's `Worker::InitNetParams`)."""
        return worker_grp % (self.nworker_groups // self.nserver_groups) == 0

    def plan(self) -> list[dict]:
        """One dict per process: {"procs", "workers": [(g, w)], "servers": [(g, s)]}."""
        return [{"procs": p, "workers": self.workers_of_procs(p),
                 "servers": self.servers_of_procs(p)} for p in range(self.nprocs)]

    @staticmethod
    def _check_index(kind: str, grp: int, idx: int, ngroups: int, per_group: int) -> None:
        if not (0 <= grp < ngroups and 0 <= idx < per_group):
            raise ValueError(f"{kind} ({grp}, {idx}) is not in this cluster "
                             f"({ngroups} groups of {per_group})")
