"""The job database's file: its schema, its migrations, and how it is opened.

`connect(path)` gives a connection to `$SINGA_HOME/jobs.db` with the schema of
this version of singa. An older file is migrated in place (each version's
`_MIGRATIONS`); a newer one is refused with a message that says so. The file
is private (0600) from its first byte. WAL lets readers (`singa list`) run
beside a writer; it needs shared memory, which network filesystems do not
give, so there the rollback journal is used.
"""
from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.errors import UserError
from runtime.jobs import jobdb_errors
from runtime.jobs.jobdb_errors import show_path

SCHEMA_VERSION = 4
#: What each version adds to the one before (version 2: the master's own
#: heartbeat; 3: the queue: priority, resources asked, dependencies, arrays;
#: 4: an ended job's hold on its slots while its processes stop).
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE jobs ADD COLUMN master_heartbeat REAL",),
    3: ("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN demand TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE jobs ADD COLUMN after TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE jobs ADD COLUMN array_id INTEGER",
        "ALTER TABLE jobs ADD COLUMN array_index INTEGER",
        "ALTER TABLE jobs ADD COLUMN settings TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE jobs ADD COLUMN admitted REAL"),  # and the arrays table (_SCHEMA)
    4: ("ALTER TABLE jobs ADD COLUMN held_until REAL",),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    conf_path TEXT,
    conf_text TEXT,
    conf_hash TEXT,
    user TEXT,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    max_restarts INTEGER NOT NULL DEFAULT 0,
    submitted REAL NOT NULL,
    started REAL,
    ended REAL,
    workspace TEXT,
    log_dir TEXT,
    launcher TEXT,
    hosts TEXT NOT NULL DEFAULT '[]',
    nprocs INTEGER,
    train_steps INTEGER,
    step INTEGER,
    loss REAL,
    accuracy REAL,
    samples_per_s REAL,
    master_pid INTEGER,
    master_start REAL,
    options TEXT NOT NULL DEFAULT '{}',
    secret TEXT NOT NULL DEFAULT '{}',
    external_id TEXT,
    master_heartbeat REAL,
    priority INTEGER NOT NULL DEFAULT 0,
    demand TEXT NOT NULL DEFAULT '{}',
    after TEXT NOT NULL DEFAULT '[]',
    array_id INTEGER,
    array_index INTEGER,
    settings TEXT NOT NULL DEFAULT '{}',
    admitted REAL,
    held_until REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS arrays(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    conf_path TEXT,
    spec TEXT NOT NULL DEFAULT '{}',
    submitted REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS procs(
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    procs_id INTEGER NOT NULL,
    host TEXT,
    pid INTEGER,
    pgid INTEGER,
    start_time REAL,
    role TEXT,
    endpoint TEXT,
    state TEXT NOT NULL DEFAULT 'PENDING',
    exit_code INTEGER,
    signal INTEGER,
    heartbeat REAL,
    step INTEGER,
    log_path TEXT,
    PRIMARY KEY(job_id, attempt, procs_id)
);
"""

# Filesystems on which SQLite's locking (and WAL's shared memory) is unreliable.

_NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph",
                         "fuse.sshfs", "fuse.glusterfs", "glusterfs", "beegfs", "9p", "afs"})


def _fs_type(path: Path) -> str | None:
    """The filesystem type of `path` from /proc/self/mounts (None where unknown)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) >= 3]
    except OSError:
        return None
    p = str(path.resolve())
    best, kind = "", None
    for mnt, fstype in mounts:
        mnt = mnt.replace("\\040", " ")
        if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, fstype
    return kind


def connect(path: Path) -> sqlite3.Connection:
    """Open the job database at `path` (created 0600), in WAL mode unless on a network
    filesystem, with the current schema (an older file migrated, a newer one refused)."""
    # The umask makes the db, -wal and -shm files 0600 from their first byte
    # (SQLite also gives -wal/-shm the db file's mode); restored right after.
    old = os.umask(0o077)
    try:
        db = sqlite3.connect(str(path), timeout=jobdb_errors.BUSY_TIMEOUT_MS / 1000,
                             isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout = {jobdb_errors.BUSY_TIMEOUT_MS}")
            network = _fs_type(path.parent) in _NETWORK_FS
            # WAL lets readers (singa list) run beside a writer; it needs shared memory,
            # which network filesystems do not give, so there the rollback journal is used.
            _retry_locked(lambda: db.execute(
                f"PRAGMA journal_mode = {'DELETE' if network else 'WAL'}").fetchone())
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            _init_schema(path, db)
        except BaseException:
            db.close()
            raise
    finally:
        os.umask(old)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # a file made by an older tool or another umask
    return db

def _retry_locked(fn: Callable[[], Any]) -> Any:
    # Switching the journal mode of a brand-new file takes an exclusive lock that
    # does not always wait on busy_timeout, so concurrent first opens retry here.
    deadline = time.monotonic() + 30.0
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)

def _version_check(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise UserError(
            f"{show_path(path)}: the job registry has schema version {version}, but this "
            f"singa understands version {SCHEMA_VERSION} at most; use the newer singa that "
            f"wrote it, or point SINGA_HOME at another directory")

def _init_schema(path: Path, db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    _version_check(path, version)
    if version == SCHEMA_VERSION:
        return
    _retry_locked(lambda: db.execute("BEGIN IMMEDIATE"))
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
        _version_check(path, version)
        if version < SCHEMA_VERSION:
            # an existing file (version >= 1) is migrated; a new one gets the whole schema
            for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1) if version else ():
                for stmt in _MIGRATIONS[v]:
                    db.execute(stmt)
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
