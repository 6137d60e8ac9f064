"""A job master frozen inside a registry write must not hold every other
writer hostage: writers find it in /proc/locks and, once it is LOST by the
registry's own rule (silent past MASTER_SILENT_S), kill it so the lock passes."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from runtime.jobs import jobdb, lockholder
from runtime.jobs.jobdb import JobDB

# a stand-in job master: records itself as the master of job 1, then freezes
# (SIGSTOP) inside a write transaction, holding the registry's write lock
_FROZEN = textwrap.dedent("""
    import os, signal, sys, time, psutil
    from runtime.jobs.jobdb import JobDB
    home, silent_for = sys.argv[1], float(sys.argv[2])
    with JobDB(home) as reg:
        reg.set_master(1, os.getpid(), psutil.Process().create_time())
        reg.master_beat(1)
        db = reg._db
        db.execute("UPDATE jobs SET master_heartbeat = ? WHERE id = 1", (time.time() - silent_for,))
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE jobs SET step = 7 WHERE id = 1")
        print("holding", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
""")


def _frozen_master(home: Path, silent_for: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _FROZEN, str(home), str(silent_for)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "holding"
    for _ in range(100):  # until it is stopped, lock in hand
        if psutil.Process(p.pid).status() == psutil.STATUS_STOPPED:
            break
        time.sleep(0.02)
    return p


def _new_running_job(reg: JobDB, ws: Path) -> jobdb.Job:
    job = reg.create_job(name="frozen", conf_path="/x/job.conf", conf_text="", workspace=str(ws),
                         launcher="local", hosts=["localhost"], nprocs=1, train_steps=10)
    reg.transition(job.id, jobdb.RUNNING)
    return job


def test_a_frozen_master_holding_the_lock_is_killed_and_its_job_is_lost(tmp_path):
    home = tmp_path / "home"
    with JobDB(home) as reg:
        _new_running_job(reg, tmp_path / "ws1")
    master = _frozen_master(home, silent_for=12.0)
    try:
        assert master.pid in lockholder.writers([home / "jobs.db", home / "jobs.db-shm"])
        with JobDB(home) as reg:
            t0 = time.monotonic()
            other = _new_running_job(reg, tmp_path / "ws2")  # a write: waits, then frees the lock
            assert time.monotonic() - t0 < 10
            assert master.wait(5) == -signal.SIGKILL
            lost = reg.reconcile(reg.job(1))
            assert lost.state == jobdb.LOST and lost.step != 7  # its open transaction rolled back
            assert lost.reason.startswith(f"the job master, pid {master.pid}, has not answered for ")
            assert reg.job(other.id).state == jobdb.RUNNING
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()


def test_a_master_that_still_beats_is_never_killed(tmp_path):
    """Silent for less than MASTER_SILENT_S: the holder is slow, not lost."""
    home = tmp_path / "home"
    with JobDB(home) as reg:
        _new_running_job(reg, tmp_path / "ws1")
    master = _frozen_master(home, silent_for=2.0)
    try:
        with JobDB(home) as reg:
            assert reg._silent_master(master.pid) is None
            assert lockholder.release_from_frozen_masters(
                [home / "jobs.db", home / "jobs.db-shm"], reg._silent_master) == []
        assert master.poll() is None and psutil.Process(master.pid).is_running()
    finally:
        master.kill()
        master.wait()


def test_writers_reads_write_locks_of_the_files_from_proc_locks(tmp_path):
    f = tmp_path / "jobs.db-shm"
    f.write_bytes(b"x")
    st = os.stat(f)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    text = (f"1: POSIX  ADVISORY  WRITE 4242 {dev}:{st.st_ino} 120 120\n"
            f"2: POSIX  ADVISORY  READ  4343 {dev}:{st.st_ino} 123 123\n"
            f"3: POSIX  ADVISORY  WRITE 4444 {dev}:{st.st_ino + 1} 0 EOF\n"
            f"4: -> POSIX  ADVISORY  WRITE 4545 {dev}:{st.st_ino} 120 120\n"
            f"5: POSIX  ADVISORY  WRITE {os.getpid()} {dev}:{st.st_ino} 120 120\n")
    # the holder only: not a reader, another file, a waiter, or this process
    assert lockholder.writers([f, tmp_path / "missing"], text) == {4242}
    assert lockholder.writers([tmp_path / "missing"], text) == set()


def test_real_sqlite_write_locks_show_in_proc_locks(tmp_path):
    if not Path(lockholder.PROC_LOCKS).exists():
        pytest.skip("no /proc/locks on this system")
    db = tmp_path / "t.db"
    code = ("import sqlite3, sys, time; d = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "d.execute('PRAGMA journal_mode=WAL'); d.execute('CREATE TABLE IF NOT EXISTS t(x)'); "
            "d.execute('BEGIN IMMEDIATE'); d.execute('INSERT INTO t VALUES (1)'); "
            "print('held', flush=True); time.sleep(30)")
    p = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        assert p.pid in lockholder.writers([db, Path(str(db) + "-shm")])
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            sqlite3.connect(db, timeout=0.1, isolation_level=None).execute("BEGIN IMMEDIATE")
    finally:
        p.kill()
        p.wait()
