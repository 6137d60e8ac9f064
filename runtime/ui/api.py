"""The dashboard's JSON views, built from the registry and the workspaces.

Every view returns a JSON-able dict. None of them ever holds `jobs.secret`
(the CurveZMQ keys): jobs go out through `Job.public_dict()` or the light
columns of `LIST_COLUMNS`, processes through `Proc.as_dict()`.

The jobs list is what a page polls every 2 s, so it is cheap: active jobs
are reconciled (as `singa list` does, never the ended ones), at most once a
second whoever asks; then, if the registry's files have not changed since
the `since` version the page already has, the answer is only "unchanged".
The rows are read with the columns the table shows (not the conf text).

The metrics stream and the logs are read incrementally from a byte offset
the page keeps, so a long job's files are never read whole more than once.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runtime.errors import UserError
from runtime.jobs import jobdb, jobdb_schema, metrics

#: the columns of the jobs table (never `secret`, never the conf text)
LIST_COLUMNS: tuple[str, ...] = (
    "id", "name", "state", "reason", "user", "submitted", "started", "ended", "hosts", "nprocs",
    "train_steps", "step", "loss", "accuracy", "samples_per_s", "priority", "array_id",
    "array_index", "attempts")
#: at most this much of a metrics stream or a log per answer (the page asks again for more)
MAX_READ = 4 * 2**20
#: a log page starts with the last this many bytes of the log
LOG_START = 256 * 1024
#: reconcile the active jobs at most this often, however many pages poll
RECONCILE_EVERY_S = 1.0


class NotFound(UserError):
    """An unknown job, process or array: a 404."""


class Registry:
    """The registry as the server's worker threads see it: one JobDB (and one
    plain connection for the light list query) per thread, since a SQLite
    connection is not shared across threads."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else jobdb.home()
        self.path = self.home / "jobs.db"
        self._local = threading.local()
        self._reconciled = 0.0
        self._reconcile_lock = threading.Lock()
        with jobdb.JobDB(self.home):
            pass  # created (0700 dir, 0600 file, current schema) before any page asks

    def db(self) -> jobdb.JobDB:
        reg = getattr(self._local, "reg", None)
        if reg is None:
            reg = self._local.reg = jobdb.JobDB(self.home)
        return reg

    def light(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = jobdb_schema.connect(self.path)
        return con

    def version(self) -> str:
        """Changes whenever the registry is written: the mtimes and sizes of
        the database and its write-ahead log (a stat each, no query)."""
        parts = []
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                st = os.stat(p)
                parts.append(f"{st.st_mtime_ns:x}.{st.st_size:x}")
            except FileNotFoundError:
                parts.append("-")
        return "-".join(parts)

    def reconcile_active(self) -> None:
        """Reconcile the jobs that claim to be active (a dead master: LOST),
        at most once every RECONCILE_EVERY_S whoever asks."""
        now = time.monotonic()
        if now - self._reconciled < RECONCILE_EVERY_S or not self._reconcile_lock.acquire(False):
            return
        try:
            reg = self.db()
            for j in reg.jobs(jobdb.ACTIVE):
                reg.reconcile(j)
            self._reconciled = time.monotonic()
        finally:
            self._reconcile_lock.release()

    def job(self, job_id: int) -> jobdb.Job:
        reg = self.db()
        try:
            return reg.reconcile(reg.job(job_id))
        except UserError as e:
            raise NotFound(str(e)) from None


# -- the jobs table --------------------------------------------------------------------------

def _hosts(text: str | None) -> list[str]:
    try:
        hosts = json.loads(text or "[]")
    except ValueError:
        return []
    return list(dict.fromkeys(h for h in hosts if isinstance(h, str)))


def jobs_view(r: Registry, since: str | None = None, states: Iterable[str] = ()) -> dict[str, Any]:
    """The jobs table: every job (or those in `states`) by id, each with its
    queue position when QUEUED, and the arrays their jobs belong to.

    `{"version", "now", "unchanged": true}` when the registry is as it was
    at version `since`."""
    r.reconcile_active()
    version = r.version()
    now = time.time()
    if since and since == version:
        return {"version": version, "now": now, "unchanged": True}
    wanted = [s for s in states if s]
    bad = [s for s in wanted if s not in jobdb.STATES]
    if bad:
        raise UserError(f"unknown state {bad[0]!r}; expected one of {', '.join(jobdb.STATES)}")
    sql = "SELECT " + ", ".join(LIST_COLUMNS) + " FROM jobs"
    if wanted:
        sql += " WHERE state IN (" + ", ".join("?" * len(wanted)) + ")"
    con = r.light()
    rows = con.execute(sql + " ORDER BY id", wanted).fetchall()
    jobs = []
    for row in rows:
        d = dict(zip(LIST_COLUMNS, row))
        d["hosts"] = _hosts(d["hosts"])
        jobs.append(d)
    queued = sorted((j for j in jobs if j["state"] == jobdb.QUEUED),
                    key=lambda j: (-(j["priority"] or 0), j["id"]))
    if wanted and jobdb.QUEUED not in wanted:
        queued = []
    elif wanted:
        # the position counts every queued job, listed or not
        queued = [{"id": i, "state": jobdb.QUEUED, "priority": p} for i, p in con.execute(
            "SELECT id, priority FROM jobs WHERE state = ? ORDER BY priority DESC, id",
            (jobdb.QUEUED,)).fetchall()]
    position = {j["id"]: k + 1 for k, j in enumerate(queued)}
    for j in jobs:
        if j["id"] in position:
            j["queue_position"] = position[j["id"]]
    arrays: dict[str, Any] = {}
    ids = sorted({j["array_id"] for j in jobs if j["array_id"] is not None})
    if ids:
        marks = ", ".join("?" * len(ids))
        for aid, name in con.execute(f"SELECT id, name FROM arrays WHERE id IN ({marks})", ids):
            arrays[str(aid)] = {"id": aid, "name": name, "states": {}}
        for aid, state, n in con.execute(f"SELECT array_id, state, COUNT(*) FROM jobs WHERE "
                                         f"array_id IN ({marks}) GROUP BY array_id, state", ids):
            if str(aid) in arrays:
                arrays[str(aid)]["states"][state] = n
    return {"version": version, "now": now, "states": list(jobdb.STATES), "jobs": jobs,
            "arrays": arrays, "queued": len(queued)}


# -- one job ---------------------------------------------------------------------------------

def _attempt_summary(procs: list[jobdb.Proc]) -> str:
    failed = [p for p in procs if p.state == jobdb.FAILED]
    if failed:
        p = failed[0]
        return (f"process {p.procs_id} ({p.role}) on {p.host or 'this host'} "
                f"{jobdb.describe_exit(p.exit_code, p.signal)}")
    if procs and all(p.state == jobdb.SUCCEEDED for p in procs):
        return f"all {len(procs)} processes succeeded"
    counts: dict[str, int] = {}
    for p in procs:
        counts[p.state] = counts.get(p.state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def checkpoints(workspace: str | None) -> list[dict[str, Any]]:
    """The checkpoint files of a workspace (SINGA's `step<N>-worker<W>`, the
    servers' `step<N>-server<g>.<s>.npz`), newest step first; sidecars
    (.sha256, .resume) are counted with their checkpoint."""
    if not workspace:
        return []
    out = []
    try:
        entries = list(os.scandir(Path(workspace) / "checkpoint"))
    except OSError:
        return []
    for e in entries:
        name = e.name
        if not name.startswith("step") or name.endswith((".sha256", ".tmp")) or ".resume" in name \
                or ".w" in name.split("-", 1)[-1] or name.startswith("."):
            continue
        try:
            step = int(name[4:].split("-", 1)[0])
            st = e.stat()
        except (ValueError, OSError):
            continue
        out.append({"file": name, "step": step, "bytes": st.st_size, "time": st.st_mtime})
    return sorted(out, key=lambda c: (-c["step"], c["file"]))


def job_view(r: Registry, job_id: int) -> dict[str, Any]:
    """A job: its row (no secret, no conf text), the processes of its latest
    attempt, the earlier attempts with what became of them, its checkpoints
    and, when QUEUED, its place in the queue."""
    job = r.job(job_id)
    procs = r.db().all_procs(job.id)
    attempts: dict[int, list[jobdb.Proc]] = {}
    for p in procs:
        attempts.setdefault(p.attempt, []).append(p)
    latest = max(attempts) if attempts else None
    now = time.time()
    d = job.public_dict()
    if job.state == jobdb.QUEUED:
        ahead = r.light().execute(
            "SELECT COUNT(*) FROM jobs WHERE state = ? AND (priority > ? OR (priority = ? AND id < ?))",
            (jobdb.QUEUED, job.priority, job.priority, job.id)).fetchone()[0]
        d["queue_position"] = ahead + 1
    array = None
    if job.array_id is not None:
        try:
            a = r.db().array(job.array_id)
            array = {"id": a["id"], "name": a["name"]}
        except UserError:
            pass
    return {
        "job": d,
        "now": now,
        "array": array,
        "procs": [{**p.as_dict(), "exit": jobdb.describe_exit(p.exit_code, p.signal,
                                                             running=p.state == jobdb.RUNNING),
                   "heartbeat_age": None if p.heartbeat is None else max(0.0, now - p.heartbeat)}
                  for p in attempts.get(latest, [])] if latest is not None else [],
        "attempt": latest,
        "earlier_attempts": [{"attempt": a, "summary": _attempt_summary(attempts[a]),
                              "procs": [p.as_dict() for p in attempts[a]]}
                             for a in sorted(attempts) if a != latest],
        "checkpoints": checkpoints(job.workspace),
        "has_metrics": bool(job.workspace) and os.path.exists(Path(job.workspace or "") / metrics.FILE),
    }


# -- metrics and logs, from an offset --------------------------------------------------------

def _read_from(path: str | Path, offset: int) -> tuple[bytes, int, bool]:
    """The complete lines of `path` from byte `offset` (at most MAX_READ), the
    offset after them, and whether the file was read again from its start
    (it shrank: truncated or replaced)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return b"", 0, offset > 0
    reset = offset > size
    if reset:
        offset = 0
    if offset == size:
        return b"", offset, reset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(MAX_READ)
    cut = data.rfind(b"\n") + 1  # a line being written stays for the next answer
    return data[:cut], offset + cut, reset


def metrics_view(r: Registry, job_id: int, offset: int = 0) -> dict[str, Any]:
    """The records of the job's metrics stream from byte `offset` on, and the
    offset to ask from next time; `more` when there is more to read now."""
    job = r.job(job_id)
    if not job.workspace:
        return {"records": [], "offset": 0, "reset": False, "more": False, "state": job.state}
    path = Path(job.workspace) / metrics.FILE
    data, new, reset = _read_from(path, max(0, offset))
    records = []
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    try:
        more = new < os.path.getsize(path)
    except OSError:
        more = False
    return {"records": records, "offset": new, "reset": reset, "more": more and len(data) > 0,
            "state": job.state, "terminal": job.terminal}


def _proc(r: Registry, job: jobdb.Job, procs_id: int, attempt: int | None) -> jobdb.Proc:
    procs = r.db().procs(job.id, attempt)
    for p in procs:
        if p.procs_id == procs_id:
            return p
    which = f"attempt {attempt}" if attempt is not None else "its latest attempt"
    raise NotFound(f"job {job.id} has no process {procs_id} in {which}")


def log_view(r: Registry, job_id: int, procs_id: int = 0, attempt: int | None = None,
             offset: int | None = None) -> dict[str, Any]:
    """New lines of one process's log: from byte `offset`, or (None) its last
    LOG_START bytes. A log on another host is read over ssh (`runtime.jobs.logs`):
    its last lines, which replace what the page shows (`replace`)."""
    job = r.job(job_id)
    p = _proc(r, job, procs_id, attempt)
    base = {"procs_id": p.procs_id, "attempt": p.attempt, "host": p.host, "role": p.role,
            "state": p.state, "job_state": job.state, "terminal": job.terminal and p.terminal,
            "path": jobdb.show_path(p.log_path) if p.log_path else None}
    from runtime.jobs import logs  # hostfile, ssh: only for a log page

    if not p.log_path:
        return {**base, "lines": [], "offset": 0, "replace": False, "error": "no log recorded"}
    if not logs._here(job, p):
        try:
            lines = logs.tail(job, p, 500)
        except Exception as e:  # noqa: BLE001 - an unreachable host is shown, not a 500
            return {**base, "lines": [], "offset": 0, "replace": False, "error": str(e)}
        return {**base, "lines": lines, "offset": 0, "replace": True, "remote": True}
    start = offset
    skip_partial = False
    if start is None:
        try:
            size = os.path.getsize(p.log_path)
        except OSError:
            size = 0
        start = max(0, size - LOG_START)
        skip_partial = start > 0
    data, new, reset = _read_from(p.log_path, start)
    if skip_partial and not reset:
        data = data[data.find(b"\n") + 1:]
    lines = [b.decode("utf-8", errors="replace").rstrip("\r") for b in data.split(b"\n")[:-1]]
    exists = os.path.exists(p.log_path)
    return {**base, "lines": lines, "offset": new, "replace": reset, "truncated": skip_partial,
            "error": None if exists else "the log does not exist yet"}


# -- compare and sweeps ----------------------------------------------------------------------

def compare_view(r: Registry, job_ids: Iterable[int] = (), array_id: int | None = None,
                 ) -> dict[str, Any]:
    """The jobs whose curves the compare page overlays, and for an array (a
    sweep) its table of final metrics, ranked as `singa sweep show` ranks it."""
    from runtime.jobs import sweep  # imports the config package: only for this page

    reg = r.db()
    out: dict[str, Any] = {"array": None, "table": None}
    jobs: list[jobdb.Job] = []
    if array_id is not None:
        try:
            a = reg.array(array_id)
        except UserError as e:
            raise NotFound(str(e)) from None
        jobs = [reg.reconcile(j) for j in reg.array_jobs(array_id)]
        ranked = sweep.ranked(jobs)
        keys = list(dict.fromkeys(k for j in jobs for k in j.settings))
        out["array"] = {"id": a["id"], "name": a["name"], "conf_path": a["conf_path"]}
        out["table"] = {
            "settings": keys,
            "rows": [{"rank": k + 1, "id": j.id, "index": j.array_index, "name": j.name,
                      "state": j.state, "settings": {s: j.settings.get(s) for s in keys},
                      "accuracy": f.accuracy, "loss": f.loss, "source": f.source,
                      "step": j.step, "train_steps": j.train_steps}
                     for k, (j, f) in enumerate(ranked)],
        }
    for i in job_ids:
        if all(j.id != i for j in jobs):
            jobs.append(r.job(i))
    out["jobs"] = [{"id": j.id, "name": j.name, "state": j.state, "array_index": j.array_index,
                    "settings": j.settings} for j in jobs]
    return out


def parse_ids(text: str | None) -> list[int]:
    """"3,5-7" -> [3, 5, 6, 7]; a bad item is a UserError."""
    out: list[int] = []
    for item in (text or "").replace(" ", ",").split(","):
        if not item:
            continue
        lo, _, hi = item.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) - int(lo) > 1000):
            raise UserError(f"bad job ids {item!r}: expected ids like 3,5-7")
        out += range(int(lo), int(hi or lo) + 1)
    return list(dict.fromkeys(out))
