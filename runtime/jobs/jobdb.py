"""The job registry: one SQLite file, `$SINGA_HOME/jobs.db`, the system of record
for every job submitted from this host and every process of it.

Who writes it: the CLI (`submit`, `kill`) and the job master, all on the
submitting host; remote processes never touch it (SQLite's locking does not
work across hosts). Every write is one short `BEGIN IMMEDIATE` transaction,
so many CLI processes and masters can write at once: a writer that finds the
file locked waits up to 30 s (`busy_timeout`) instead of failing.

State is derived from liveness, never only from what a job last wrote:
`reconcile(job)` moves a job whose master has died, never started, or has
not written its own heartbeat (`master_beat`) for `MASTER_SILENT_S` (a
frozen master) to LOST, so `singa list` never shows a stale RUNNING. A terminal state is final:
`transition` refuses to leave it, so a late writer (a master that was slow
to notice a kill, a reconcile racing a master's last word) cannot overwrite
how a job ended.

The file and its directory are private to the user (0600 / 0700): the
registry holds each job's secrets (e.g. its CurveZMQ keys) in `jobs.secret`,
which no CLI output ever prints.

This module is on the path of `singa list` / `singa view`, which must start
fast: it imports only the standard library (psutil and hashlib on demand).
"""
from __future__ import annotations

import json
import os
import signal as _signal
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import UserError
from runtime.jobs import jobdb_errors, jobdb_schema, lockholder, queue, states
from runtime.jobs.jobdb_errors import show_path as show_path  # re-exported: the CLI's paths
from runtime.jobs.jobdb_schema import SCHEMA_VERSION as SCHEMA_VERSION  # re-exported
from runtime.jobs.states import sql_set

# the job's states (runtime.jobs.states), as the registry's words: jobdb.RUNNING etc.
QUEUED, PENDING, RUNNING, SUCCEEDED = states.QUEUED, states.PENDING, states.RUNNING, states.SUCCEEDED
FAILED, KILLED, LOST, CANCELLED = states.FAILED, states.KILLED, states.LOST, states.CANCELLED
STATES, TERMINAL, ACTIVE = states.STATES, states.TERMINAL, states.ACTIVE

#: A PENDING or QUEUED job whose master has not registered after this many seconds is LOST.
MASTER_START_TIMEOUT = 30.0
#: A master whose pid's start time differs from the recorded one by more is a reused pid.
START_TIME_SLACK = 0.5
#: A job whose master has not written its heartbeat for this many seconds is LOST,
#: alive or not (a frozen master). Its processes give up on it after 5 s
#: (`runtime.comm.heartbeat`), so by then they have stopped.
MASTER_SILENT_S = 10.0


@dataclass
class Job:
    """One row of `jobs`. `hosts`, `options` and `secret` are decoded from JSON.

    `secret` is excluded from `repr` and from `public_dict()`: nothing the CLI
    prints may contain it.
    """

    id: int
    name: str
    conf_path: str | None
    conf_text: str | None = field(repr=False)
    conf_hash: str | None
    user: str | None
    state: str
    reason: str
    attempts: int
    max_restarts: int
    submitted: float
    started: float | None
    ended: float | None
    workspace: str | None
    log_dir: str  # set by create_job in the transaction that inserts the row
    launcher: str | None
    hosts: list[str]
    nprocs: int | None
    train_steps: int | None
    step: int | None
    loss: float | None
    accuracy: float | None
    samples_per_s: float | None
    master_pid: int | None
    master_start: float | None
    options: dict[str, Any]
    secret: dict[str, Any] = field(repr=False)
    external_id: str | None
    master_heartbeat: float | None = None
    priority: int = 0
    #: host -> {"cores", "mem", "procs", "threads"}: what it holds once admitted
    demand: dict[str, Any] = field(default_factory=dict)
    #: [[parent job id, "ok" | "any"]]: `--after`
    after: list[Any] = field(default_factory=list)
    array_id: int | None = None
    array_index: int | None = None
    #: the sweep point of an array's job: field path -> value
    settings: dict[str, Any] = field(default_factory=dict)
    admitted: float | None = None
    #: an ended job's processes may still be stopping: it holds its slots until then
    held_until: float | None = None

    @property
    def terminal(self) -> bool:
        """True once the job has ended (SUCCEEDED, FAILED, KILLED or LOST)."""
        return self.state in TERMINAL

    @property
    def elapsed(self) -> float | None:
        """Seconds from start to end (or to now, while it runs); None before it starts."""
        if self.started is None:
            return None
        end = self.ended if self.ended is not None else time.time()
        return max(0.0, end - self.started)

    def public_dict(self) -> dict[str, Any]:
        """The job as a JSON-able dict, without `secret` and `conf_text`."""
        d = {c: getattr(self, c) for c in JOB_COLUMNS if c not in ("secret", "conf_text")}
        d["elapsed"] = self.elapsed
        return d


@dataclass
class Proc:
    """One row of `procs`: one OS process ("procs" in SINGA's words) of one attempt."""

    job_id: int
    attempt: int
    procs_id: int
    host: str  # host, role and log_path: `add_proc`, the only writer, always sets them
    pid: int | None
    pgid: int | None
    start_time: float | None
    role: str
    endpoint: str | None
    state: str
    exit_code: int | None
    signal: int | None
    heartbeat: float | None
    step: int | None
    log_path: str

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def as_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in PROC_COLUMNS}


JOB_COLUMNS: tuple[str, ...] = (
    "id", "name", "conf_path", "conf_text", "conf_hash", "user", "state", "reason", "attempts",
    "max_restarts", "submitted", "started", "ended", "workspace", "log_dir", "launcher", "hosts",
    "nprocs", "train_steps", "step", "loss", "accuracy", "samples_per_s", "master_pid",
    "master_start", "options", "secret", "external_id", "master_heartbeat", "priority", "demand",
    "after", "array_id", "array_index", "settings", "admitted", "held_until")
PROC_COLUMNS: tuple[str, ...] = (
    "job_id", "attempt", "procs_id", "host", "pid", "pgid", "start_time", "role", "endpoint",
    "state", "exit_code", "signal", "heartbeat", "step", "log_path")
_PROC_UPDATABLE = frozenset(PROC_COLUMNS) - {"job_id", "attempt", "procs_id"}
_JOB_SELECT = "SELECT " + ", ".join(JOB_COLUMNS) + " FROM jobs"
_PROC_SELECT = "SELECT " + ", ".join(PROC_COLUMNS) + " FROM procs"
_JSON_COLUMNS: tuple[tuple[int, str], ...] = tuple(
    (JOB_COLUMNS.index(c), empty) for c, empty in (
        ("hosts", "[]"), ("options", "{}"), ("secret", "{}"), ("demand", "{}"), ("after", "[]"),
        ("settings", "{}")))
_I_LOG_DIR = JOB_COLUMNS.index("log_dir")
_TERMINAL_SQL = sql_set(TERMINAL)


def _job_from_row(row: tuple[Any, ...], path: Path) -> Job:
    """The Job of a `jobs` row; a JSON column that does not decode is a JobDBError
    naming the registry file `path`, the job and the column."""
    r = list(row)
    for i, empty in _JSON_COLUMNS:
        try:
            r[i] = json.loads(r[i] or empty)
        except (ValueError, TypeError) as e:
            raise jobdb_errors.bad_row(path, r[0], JOB_COLUMNS[i], e) from None
    r[_I_LOG_DIR] = r[_I_LOG_DIR] or ""
    return Job(*r)


def home() -> Path:
    """The registry's directory: `$SINGA_HOME`, else `~/.singa`; created 0700."""
    env = os.environ.get("SINGA_HOME")
    path = Path(env).expanduser() if env else Path.home() / ".singa"
    _private_dir(path)
    return path


_default_home = home  # JobDB's parameter `home` hides the function


def _private_dir(path: Path) -> None:
    """Create `path` 0700 if missing; one that cannot be is a JobDBError naming it."""
    if not path.is_dir():
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
        except OSError as e:
            raise jobdb_errors.explain_dir(path, e) from None


def describe_exit(exit_code: int | None, signal: int | None, *, running: bool = False) -> str:
    """How a process ended, in words: `exited with code 3`, `was killed by SIGKILL`.

    A negative `exit_code` is read as subprocess's "killed by signal -code".
    Unknown (both None): `still running` when `running`, else `-`.
    """
    if signal is None and exit_code is not None and exit_code < 0:
        signal = -exit_code
    if signal is not None:
        try:
            name = _signal.Signals(signal).name
        except ValueError:
            name = f"signal {signal}"
        return f"was killed by {name}"
    if exit_code is not None:
        return f"exited with code {exit_code}"
    return "still running" if running else "-"


class JobDB:
    """The registry at `home/jobs.db` (default `home()`); one SQLite connection.

    Use as a context manager or call `close()`. Not shared across threads:
    each thread (or process) opens its own.
    """

    def __init__(self, home: Path | None = None):
        self.home = Path(home).expanduser() if home is not None else _default_home()
        _private_dir(self.home)
        self.path = self.home / "jobs.db"
        self._db = self._connect()

    # -- connection and schema ---------------------------------------------------------------

    def _connect(self) -> jobdb_errors.GuardedConnection:
        # A registry that cannot be opened (damaged, foreign, read-only) is one line
        # for the user, and so is any later failure of a statement (the guard).
        with jobdb_errors.translate(self.path):
            return jobdb_errors.GuardedConnection(jobdb_schema.connect(self.path), self.path)

    @contextmanager
    def write(self) -> Iterator[jobdb_errors.GuardedConnection]:
        """One short write transaction, taken with the write lock up front (no
        upgrade deadlock); the only way anything writes the registry."""
        self._begin()
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _begin(self) -> None:
        """Take the write lock, waiting up to 30 s. While waiting, a job master
        that holds the lock frozen (silent past MASTER_SILENT_S, so LOST by this
        registry's own rule) is killed so that the lock passes on
        (`runtime.jobs.lockholder`): one stopped master must not stop every
        singa command and every other job."""
        deadline = time.monotonic() + jobdb_errors.BUSY_TIMEOUT_MS / 1000
        while not self._db.begin_immediate(min(1.0, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise jobdb_errors.explain(self.path, sqlite3.OperationalError("database is locked"))
            lock_files = [self.path, self.path.with_name(self.path.name + "-shm")]
            lockholder.release_from_frozen_masters(lock_files, self._silent_master)

    def _silent_master(self, pid: int) -> int | None:
        """The job whose master is process `pid` (pid and start time) and has not
        beaten for MASTER_SILENT_S, else None."""
        row = self._db.execute("SELECT id, master_start, master_heartbeat FROM jobs WHERE "
                               "master_pid = ? ORDER BY id DESC LIMIT 1", (pid,)).fetchone()
        if row is None or row[2] is None or time.time() - row[2] <= MASTER_SILENT_S:
            return None
        return row[0] if _alive(pid, row[1]) else None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JobDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs --------------------------------------------------------------------------------

    def _unknown(self, job_id: int) -> UserError:
        return UserError(f"no job {job_id} in the registry ({show_path(self.path)}); "
                         f"'singa list --all' shows every job")

    def create_job(self, *, name: str, conf_path: str | None, conf_text: str,
                   workspace: str | None, launcher: str, hosts: list[str], nprocs: int,
                   train_steps: int | None, max_restarts: int = 0,
                   options: dict[str, Any] | None = None, secret: dict[str, Any] | None = None,
                   user: str | None = None, priority: int = 0,
                   demand: dict[str, Any] | None = None, after: list[Any] | None = None,
                   array_id: int | None = None, array_index: int | None = None,
                   settings: dict[str, Any] | None = None) -> Job:
        """Record a new job; its log dir `home/jobs/ID` is created 0700.

        The job enters the queue (`runtime.jobs.queue`) in the same
        transaction: it is PENDING if admitted at once, else QUEUED with the
        reason it waits, or CANCELLED when a dependency can no longer hold.
        An `after` parent that is not in the registry is a UserError.

        A job holds its workspace while it is active (QUEUED, PENDING or RUNNING): a job
        whose workspace is the same directory as an active job's is refused with
        a UserError naming that job, and nothing is recorded. The check and the
        insert are one transaction, so of two concurrent submits one is refused.
        """
        import hashlib  # not needed on the list/view path

        if user is None:
            import getpass
            try:
                user = getpass.getuser()
            except (KeyError, OSError):
                user = str(os.getuid())
        conf_hash = hashlib.sha256(conf_text.encode("utf-8")).hexdigest()
        jobs_dir = self.home / "jobs"
        _private_dir(jobs_dir)
        self.check_workspace(workspace)  # and a stale holder (master gone) becomes LOST
        with self.write() as db:
            self._refuse_held(db, workspace)  # again, under the write lock: the registry is the lock
            for parent, _ in after or ():
                if db.execute("SELECT 1 FROM jobs WHERE id = ?", (int(parent),)).fetchone() is None:
                    raise UserError(f"--after {parent}: no job {parent} in the registry "
                                    f"({show_path(self.path)}); 'singa list --all' shows every job")
            cur = db.execute(
                "INSERT INTO jobs(name, conf_path, conf_text, conf_hash, user, state, reason, "
                "max_restarts, submitted, workspace, launcher, hosts, nprocs, train_steps, "
                "options, secret, priority, demand, after, array_id, array_index, settings) "
                "VALUES (?, ?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, conf_path, conf_text, conf_hash, user, QUEUED, int(max_restarts),
                 time.time(), workspace, launcher, json.dumps(list(hosts)), nprocs, train_steps,
                 json.dumps(options or {}), json.dumps(secret or {}), int(priority),
                 json.dumps(demand or {}), json.dumps([list(a) for a in after or ()]),
                 array_id, array_index, json.dumps(settings or {})))
            job_id = cur.lastrowid
            assert job_id is not None  # an INSERT always sets it
            log_dir = jobs_dir / str(job_id)
            log_dir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(log_dir, 0o700)
            db.execute("UPDATE jobs SET log_dir = ? WHERE id = ?", (str(log_dir), job_id))
            queue.run_pass(db)
        return self.job(job_id)

    def schedule(self) -> bool:
        """Run a queue pass if it would change anything (checked first without
        the write lock, so many waiting masters do not serialise on it); True
        if one ran."""
        if not queue.stale(self._db):
            return False
        with self.write() as db:
            queue.run_pass(db)
        return True

    def create_array(self, name: str, conf_path: str | None, spec: dict[str, Any]) -> int:
        """Record a job array (a sweep) and return its id; its jobs are created
        with `create_job(array_id=...)`."""
        with self.write() as db:
            cur = db.execute("INSERT INTO arrays(name, conf_path, spec, submitted) "
                             "VALUES (?, ?, ?, ?)", (name, conf_path, json.dumps(spec), time.time()))
            assert cur.lastrowid is not None
            return int(cur.lastrowid)

    def array(self, array_id: int) -> dict[str, Any]:
        """The array `array_id` as a dict (id, name, conf_path, spec, submitted);
        an unknown id is a UserError."""
        row = self._db.execute("SELECT id, name, conf_path, spec, submitted FROM arrays "
                               "WHERE id = ?", (int(array_id),)).fetchone()
        if row is None:
            raise UserError(f"no job array {array_id} in the registry ({show_path(self.path)}); "
                            "'singa list --all' shows the arrays with their jobs")
        return {"id": row[0], "name": row[1], "conf_path": row[2], "spec": json.loads(row[3]),
                "submitted": row[4]}

    def array_jobs(self, array_id: int) -> list[Job]:
        """The jobs of an array, by index."""
        rows = self._db.execute(_JOB_SELECT + " WHERE array_id = ? ORDER BY array_index, id",
                                (int(array_id),)).fetchall()
        return [_job_from_row(r, self.path) for r in rows]

    def drop_array(self, array_id: int) -> bool:
        """Remove an array that has no job (a sweep whose first submit failed);
        True if it was removed. An array with jobs is kept: they are its record."""
        with self.write() as db:
            return db.execute("DELETE FROM arrays WHERE id = ? AND NOT EXISTS (SELECT 1 FROM "
                              "jobs WHERE array_id = ?)", (int(array_id),) * 2).rowcount > 0

    def check_workspace(self, workspace: str | None) -> None:
        """Refuse (UserError naming the job) a workspace an active job holds.

        Active holders are reconciled first, so a job whose master has died
        (LOST) does not hold its workspace for ever.
        """
        if not workspace:
            return
        for job_id in _holders(self._db, workspace):
            self.reconcile(self.job(job_id))
        self._refuse_held(self._db, workspace)

    @staticmethod
    def _refuse_held(db: Any, workspace: str | None) -> None:
        if not workspace:
            return
        ids = _holders(db, workspace)
        if ids:
            name, state = db.execute("SELECT name, state FROM jobs WHERE id = ?",
                                     (ids[0],)).fetchone()
            raise UserError(f"workspace {os.path.realpath(workspace)} is in use by job {ids[0]} "
                            f"({name}, {state}); wait for it, kill it (singa kill {ids[0]}), "
                            f"or set another workspace")

    def job(self, job_id: int) -> Job:
        """The job `job_id`; an unknown id is a UserError that says how to see every job."""
        row = self._db.execute(_JOB_SELECT + " WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise self._unknown(job_id)
        return _job_from_row(row, self.path)

    def state(self, job_id: int) -> str:
        """The job's state alone (a cheap read, for the masters waiting in the queue)."""
        row = self._db.execute("SELECT state FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise self._unknown(job_id)
        return str(row[0])

    def jobs(self, states: Iterable[str] | None = None) -> list[Job]:
        """Every job (or those in `states`), ordered by id."""
        if states is None:
            rows = self._db.execute(_JOB_SELECT + " ORDER BY id").fetchall()
        else:
            wanted = [self._check_state(s) for s in states]
            if not wanted:
                return []
            marks = ", ".join("?" * len(wanted))
            rows = self._db.execute(_JOB_SELECT + f" WHERE state IN ({marks}) ORDER BY id",
                                    wanted).fetchall()
        return [_job_from_row(r, self.path) for r in rows]

    @staticmethod
    def _check_state(state: str) -> str:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
        return state

    def transition(self, job_id: int, state: str, reason: str = "", hold: float = 0.0) -> bool:
        """Move the job to `state` unless it has already ended; True if it moved.

        A terminal state is final: the update is refused (False, nothing changed).
        The first RUNNING sets `started`; a terminal state sets `ended` and
        passes the job's resources on (a queue pass, same transaction) -- or,
        with `hold` seconds, keeps holding them while its processes are
        being stopped, until `release` (or `hold` runs out: never for ever).
        """
        self._check_state(state)
        now = time.time()
        held = now + hold if hold > 0 and state in TERMINAL else None
        with self.write() as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, reason = ?, held_until = ?, "
                "started = CASE WHEN ? = 'RUNNING' AND started IS NULL THEN ? ELSE started END, "
                "ended = CASE WHEN ? THEN ? ELSE ended END "
                f"WHERE id = ? AND state NOT IN {_TERMINAL_SQL}",
                (state, reason, held, state, now, state in TERMINAL, now, int(job_id)))
            if cur.rowcount == 0 and db.execute("SELECT 1 FROM jobs WHERE id = ?",
                                                (int(job_id),)).fetchone() is None:
                raise self._unknown(job_id)
            if cur.rowcount and state in TERMINAL:
                queue.run_pass(db)  # its slots pass to the next job at once
            return cur.rowcount > 0

    def release(self, job_id: int) -> None:
        """The ended job's processes have stopped: its held slots pass on now."""
        with self.write() as db:
            if db.execute("UPDATE jobs SET held_until = NULL WHERE id = ? AND held_until IS NOT "
                          "NULL", (int(job_id),)).rowcount:
                queue.run_pass(db)

    def note(self, job_id: int, reason: str) -> bool:
        """Set the job's reason without changing its state (e.g. "attempt 1 failed:
        ...; restarting"); refused (False) once the job has ended, like `transition`."""
        with self.write() as db:
            cur = db.execute(f"UPDATE jobs SET reason = ? WHERE id = ? AND state NOT IN "
                             f"{_TERMINAL_SQL}", (reason, int(job_id)))
            if cur.rowcount == 0 and db.execute("SELECT 1 FROM jobs WHERE id = ?",
                                                (int(job_id),)).fetchone() is None:
                raise self._unknown(job_id)
            return cur.rowcount > 0

    def _set(self, job_id: int, sql: str, args: tuple[Any, ...]) -> None:
        with self.write() as db:
            if db.execute(f"UPDATE jobs SET {sql} WHERE id = ?", (*args, int(job_id))).rowcount == 0:
                raise self._unknown(job_id)

    def set_master(self, job_id: int, pid: int, start_time: float | None) -> None:
        """Record the job master: its pid and `psutil.Process(pid).create_time()`
        (None when it could not be read: a master that died at once; liveness
        then goes by the pid alone)."""
        start = None if start_time is None else float(start_time)
        self._set(job_id, "master_pid = ?, master_start = ?", (int(pid), start))

    def master_beat(self, job_id: int) -> str:
        """The job master's heartbeat: record that it is alive now; returns the
        job's state (a master that finds its job ended must stop)."""
        with self.write() as db:
            row = db.execute("UPDATE jobs SET master_heartbeat = ? WHERE id = ? RETURNING state",
                             (time.time(), int(job_id))).fetchone()
            if row is None:
                raise self._unknown(job_id)
            return str(row[0])

    def set_external_id(self, job_id: int, ext: str) -> None:
        """Record the id another system gave the job (e.g. a Slurm job id)."""
        self._set(job_id, "external_id = ?", (ext,))

    def progress(self, job_id: int, step: int, loss: float | None = None,
                 accuracy: float | None = None, samples_per_s: float | None = None) -> None:
        """Record training progress; a metric given as None keeps its last value."""
        self._set(job_id, "step = ?, loss = COALESCE(?, loss), accuracy = COALESCE(?, accuracy), "
                  "samples_per_s = COALESCE(?, samples_per_s)",
                  (int(step), loss, accuracy, samples_per_s))

    def begin_attempt(self, job_id: int) -> int:
        """Count one more attempt at running the job and return its number (the first is 1)."""
        with self.write() as db:
            row = db.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = ? "
                             "RETURNING attempts", (int(job_id),)).fetchone()
            if row is None:
                raise self._unknown(job_id)
            return int(row[0])

    # -- procs -------------------------------------------------------------------------------

    def add_proc(self, job_id: int, attempt: int, procs_id: int, *, host: str, role: str,
                 log_path: str) -> None:
        """Record process `procs_id` of attempt `attempt`, in state PENDING."""
        with self.write() as db:
            try:
                db.execute("INSERT INTO procs(job_id, attempt, procs_id, host, role, state, "
                           "log_path) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (int(job_id), int(attempt), int(procs_id), host, role, PENDING,
                            str(log_path)))
            except sqlite3.IntegrityError as e:
                if "FOREIGN KEY" in str(e):
                    raise self._unknown(job_id) from None
                raise ValueError(f"job {job_id} attempt {attempt} already has procs "
                                 f"{procs_id}") from None

    def update_proc(self, job_id: int, attempt: int, procs_id: int, /, **fields: Any) -> None:
        """Set columns of one process, e.g. `pid=..., state="RUNNING"`.

        Only real, non-key columns may be set (others are a ValueError, as is an
        unknown state); an unknown process is a ValueError too.
        """
        bad = sorted(set(fields) - _PROC_UPDATABLE)
        if bad:
            raise ValueError(f"procs has no updatable column {', '.join(bad)}; "
                             f"expected some of {', '.join(sorted(_PROC_UPDATABLE))}")
        if "state" in fields:
            self._check_state(fields["state"])
        if not fields:
            return
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.write() as db:
            cur = db.execute(f"UPDATE procs SET {sets} WHERE job_id = ? AND attempt = ? AND "
                             "procs_id = ?", (*fields.values(), int(job_id), int(attempt),
                                              int(procs_id)))
            if cur.rowcount == 0:
                raise ValueError(f"job {job_id} attempt {attempt} has no procs {procs_id}")

    def procs(self, job_id: int, attempt: int | None = None) -> list[Proc]:
        """The processes of one attempt (None: the latest attempt that has any), by procs id."""
        if attempt is None:
            rows = self._db.execute(
                _PROC_SELECT + " WHERE job_id = ? AND attempt = (SELECT MAX(attempt) FROM procs "
                "WHERE job_id = ?) ORDER BY procs_id", (int(job_id), int(job_id))).fetchall()
        else:
            rows = self._db.execute(_PROC_SELECT + " WHERE job_id = ? AND attempt = ? "
                                    "ORDER BY procs_id", (int(job_id), int(attempt))).fetchall()
        return [Proc(*r) for r in rows]

    def all_procs(self, job_id: int) -> list[Proc]:
        """Every process of every attempt, by attempt then procs id."""
        rows = self._db.execute(_PROC_SELECT + " WHERE job_id = ? ORDER BY attempt, procs_id",
                                (int(job_id),)).fetchall()
        return [Proc(*r) for r in rows]

    # -- liveness ----------------------------------------------------------------------------

    def reconcile(self, job: Job) -> Job:
        """The job with its state derived from liveness; returns the fresh row.

        A job that has not ended becomes LOST when its master (on this host) is
        gone -- no such pid, a zombie, or a pid reused by another process (start
        time differs) -- or has not written its heartbeat (`master_beat`) for
        `MASTER_SILENT_S`, alive or not (a frozen master). A PENDING job with no
        master, or whose master has not beaten, 30 s after submission becomes
        LOST too (the master never started). The rows of its processes that had
        not ended then say what became of them (`_proc_end`); those still running
        on this host are looked at again on each reconcile of the LOST job.
        """
        if job.terminal:
            if job.state == LOST:
                self._settle_procs(job.id)
            return job
        now = time.time()
        reason = None
        silent = None if job.master_heartbeat is None else now - job.master_heartbeat
        if job.master_pid is not None:
            alive = _alive(job.master_pid, job.master_start)
            if alive and silent is None and job.state in (PENDING, QUEUED) \
                    and now - job.submitted > MASTER_START_TIMEOUT:
                silent = now - job.submitted
            # silence first: a frozen master killed for holding the registry's
            # lock (lockholder) is gone now, but what happened is that it froze
            if silent is not None and silent > MASTER_SILENT_S:
                reason = f"the job master, pid {job.master_pid}, has not answered for {silent:.0f} s"
            elif not alive:
                reason = (f"the job master (pid {job.master_pid}) is gone; "
                          "the job's processes may still be running")
        elif job.state in (PENDING, QUEUED) and now - job.submitted > MASTER_START_TIMEOUT:
            reason = "the job master never started"
        if reason is None:
            return job
        with self.write() as db:
            # a master that beat (or a pid recorded) since the row was read is not LOST
            moved = db.execute(
                f"UPDATE jobs SET state = ?, reason = ?, ended = ? WHERE id = ? AND state NOT IN "
                f"{_TERMINAL_SQL} AND master_pid IS ? AND master_heartbeat IS ?",
                (LOST, reason, now, job.id, job.master_pid, job.master_heartbeat)).rowcount
            if moved:
                queue.run_pass(db)  # a LOST master's slots are free again
        if moved:
            self._settle_procs(job.id)
        return self.job(job.id)

    def _settle_procs(self, job_id: int) -> None:
        """Record what became of the processes of a LOST job that had not ended."""
        ends: list[tuple[Proc, dict[str, Any]]] = []
        for p in self.all_procs(job_id):
            if not p.terminal and (end := _proc_end(p)) is not None:
                ends.append((p, end))
        if not ends:
            return
        with self.write() as db:
            for p, end in ends:
                sets = ", ".join(f"{k} = ?" for k in end)
                db.execute(f"UPDATE procs SET {sets} WHERE job_id = ? AND attempt = ? AND "
                           f"procs_id = ? AND state NOT IN {_TERMINAL_SQL}",
                           (*end.values(), p.job_id, p.attempt, p.procs_id))


def _proc_end(p: Proc) -> dict[str, Any] | None:
    """What became of process `p` (not ended) of a job whose master is gone, as
    the columns to set: None while it still runs on this host (`orphans.fate`)."""
    from runtime.jobs import orphans  # only for a LOST job

    fate = orphans.fate(p.host, p.pgid, p.start_time, p.log_path)
    if fate == orphans.RUNNING:
        return None
    if fate == orphans.STOPPED:
        return {"state": FAILED, "exit_code": orphans.ORPHAN_EXIT}
    return {"state": LOST}


def _holders(db: Any, workspace: str) -> list[int]:
    """Ids of the active jobs whose workspace is `workspace`, as real absolute paths."""
    want = os.path.realpath(workspace)
    rows = db.execute("SELECT id, workspace FROM jobs WHERE workspace IS NOT NULL AND state IN "
                      + sql_set(ACTIVE) + " ORDER BY id").fetchall()
    return [i for i, ws in rows if os.path.realpath(ws) == want]


def _alive(pid: int, start: float | None) -> bool:
    """True if `pid` runs and (when `start` is known) is the process that started at `start`;
    one we may not look at counts as alive (someone else's: we cannot tell, so no LOST)."""
    from runtime.jobs import pgroup  # psutil: only needed when some job is active

    return pgroup.alive(pid, start, slack=START_TIME_SLACK, denied=True)
