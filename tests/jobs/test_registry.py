"""The job registry on real SQLite files, with real processes as job masters;
and `logfile.tail` / `logfile.follow` on real files."""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from runtime.errors import UserError
from runtime.jobs import jobdb, jobdb_schema, logfile, orphans
from runtime.jobs.jobdb import JobDB, describe_exit

ROOT = Path(__file__).resolve().parents[2]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


_WS = itertools.count()


def new_job(reg: JobDB, **kw) -> jobdb.Job:
    # each its own workspace: an active job holds its workspace
    args: dict[str, Any] = dict(name="mnist", conf_path="/x/job.conf", conf_text="name: 'mnist'\n",
                workspace=f"/x/ws{next(_WS)}", launcher="local", hosts=["localhost", "localhost"], nprocs=2,
                train_steps=1200)
    args.update(kw)
    return reg.create_job(**args)


@pytest.fixture
def reg(tmp_path):
    with JobDB(tmp_path / "home") as r:
        yield r


# -- files, pragmas, schema -----------------------------------------------------------------

def test_files_are_private_even_under_a_permissive_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with JobDB(tmp_path / "home") as reg, JobDB(tmp_path / "home") as other:
            job = new_job(reg)
            other.transition(job.id, jobdb.RUNNING)
            home = tmp_path / "home"
            assert mode(home) == 0o700
            assert mode(home / "jobs.db") == 0o600
            # WAL side files exist while connections are open; they must be private too.
            for side in ("jobs.db-wal", "jobs.db-shm"):
                assert (home / side).exists(), side
                assert mode(home / side) == 0o600, side
            assert Path(job.log_dir) == home / "jobs" / str(job.id)
            assert mode(Path(job.log_dir)) == 0o700
            assert mode(home / "jobs") == 0o700
    finally:
        os.umask(old)


def test_home_comes_from_singa_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SINGA_HOME", str(tmp_path / "h"))
    assert jobdb.home() == tmp_path / "h"
    assert mode(tmp_path / "h") == 0o700
    with JobDB() as reg:
        assert reg.path == tmp_path / "h" / "jobs.db"
    monkeypatch.delenv("SINGA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert jobdb.home() == tmp_path / "user" / ".singa"


def test_wal_busy_timeout_and_schema_version(reg):
    db = sqlite3.connect(reg.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == jobdb.SCHEMA_VERSION == 4
    cols = [r[1] for r in db.execute("PRAGMA table_info(jobs)")]
    assert tuple(cols) == jobdb.JOB_COLUMNS
    cols = [r[1] for r in db.execute("PRAGMA table_info(procs)")]
    assert tuple(cols) == jobdb.PROC_COLUMNS
    assert "jobs_state" in [r[1] for r in db.execute("PRAGMA index_list(jobs)")]
    db.close()
    assert reg._db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert reg._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_a_newer_schema_is_refused_naming_the_file_and_versions(tmp_path):
    JobDB(tmp_path / "h").close()
    db = sqlite3.connect(tmp_path / "h" / "jobs.db")
    db.execute("PRAGMA user_version = 7")
    db.commit()
    db.close()
    with pytest.raises(UserError) as e:
        JobDB(tmp_path / "h")
    msg = str(e.value)
    assert str(tmp_path / "h" / "jobs.db") in msg
    assert "version 7" in msg and f"version {jobdb.SCHEMA_VERSION}" in msg


def test_reopening_keeps_the_jobs(tmp_path):
    with JobDB(tmp_path / "h") as reg:
        a = new_job(reg).id
    with JobDB(tmp_path / "h") as reg:
        assert reg.job(a).name == "mnist"
        assert new_job(reg).id == a + 1


# -- jobs -----------------------------------------------------------------------------------

def test_create_job_records_every_field(reg):
    before = time.time()
    job = new_job(reg, options={"resume": True}, secret={"curve": "s3cret"}, max_restarts=2,
                  user="alice")
    assert job.id == 1 and job.state == jobdb.PENDING and job.reason == ""
    assert before <= job.submitted <= time.time()
    assert job.started is None and job.ended is None and job.elapsed is None
    import hashlib
    assert job.conf_hash == hashlib.sha256(b"name: 'mnist'\n").hexdigest()
    assert job.hosts == ["localhost", "localhost"] and job.nprocs == 2
    assert job.options == {"resume": True} and job.secret == {"curve": "s3cret"}
    assert job.max_restarts == 2 and job.attempts == 0 and job.user == "alice"
    assert job.train_steps == 1200 and job.step is None
    assert "s3cret" not in repr(job)
    pub = job.public_dict()
    assert "secret" not in pub and "conf_text" not in pub
    assert pub["hosts"] == ["localhost", "localhost"] and pub["elapsed"] is None
    json.dumps(pub)
    assert new_job(reg).user  # the current user by default


def test_unknown_job_is_a_user_error(reg):
    with pytest.raises(UserError, match=r"no job 42 in the registry \(.*jobs\.db\); "
                                        r"'singa list --all' shows every job"):
        reg.job(42)
    with pytest.raises(UserError, match="no job 42"):
        reg.transition(42, jobdb.RUNNING)
    with pytest.raises(UserError, match="no job 42"):
        reg.set_master(42, 1, 1.0)
    with pytest.raises(UserError, match="no job 42"):
        reg.add_proc(42, 1, 0, host="h", role="worker", log_path="/l")


def test_transitions_set_times_and_a_terminal_state_is_final(reg):
    job = new_job(reg)
    assert reg.transition(job.id, jobdb.RUNNING)
    started = reg.job(job.id).started
    assert started is not None and reg.job(job.id).ended is None
    time.sleep(0.01)
    assert reg.transition(job.id, jobdb.RUNNING, "restarted")
    assert reg.job(job.id).started == started  # only the first RUNNING sets it
    assert reg.note(job.id, "attempt 1 failed; restarting")
    j = reg.job(job.id)
    assert (j.state, j.reason) == (jobdb.RUNNING, "attempt 1 failed; restarting")
    assert reg.transition(job.id, jobdb.FAILED, "procs 1 exited with code 3")
    j = reg.job(job.id)
    assert j.state == jobdb.FAILED and j.reason == "procs 1 exited with code 3" and j.terminal
    assert j.ended >= j.started and j.elapsed == pytest.approx(j.ended - j.started)
    assert reg.note(job.id, "late note") is False
    for s in (jobdb.RUNNING, jobdb.SUCCEEDED, jobdb.LOST, jobdb.PENDING):
        assert reg.transition(job.id, s, "late") is False
    assert reg.job(job.id) == j
    with pytest.raises(ValueError, match="unknown state 'DONE'.*PENDING, RUNNING"):
        reg.transition(job.id, "DONE")


def test_jobs_filters_by_state_in_id_order(reg):
    ids = [new_job(reg, name=f"j{i}").id for i in range(5)]
    reg.transition(ids[1], jobdb.RUNNING)
    reg.transition(ids[3], jobdb.KILLED)
    assert [j.id for j in reg.jobs()] == ids
    assert [j.id for j in reg.jobs([jobdb.PENDING, jobdb.RUNNING])] == [ids[0], ids[1], ids[2], ids[4]]
    assert [j.id for j in reg.jobs(jobdb.TERMINAL)] == [ids[3]]
    assert reg.jobs([]) == []
    with pytest.raises(ValueError):
        reg.jobs(["nope"])


def test_master_external_id_progress_and_attempts(reg):
    job = new_job(reg)
    reg.set_master(job.id, 1234, 1700000000.5)
    reg.set_external_id(job.id, "slurm:991")
    assert reg.begin_attempt(job.id) == 1
    assert reg.begin_attempt(job.id) == 2
    reg.progress(job.id, 300, loss=1.5, accuracy=0.5, samples_per_s=900.0)
    reg.progress(job.id, 400, loss=1.25)  # accuracy and speed keep their last values
    j = reg.job(job.id)
    assert (j.master_pid, j.master_start, j.external_id, j.attempts) == (1234, 1700000000.5,
                                                                         "slurm:991", 2)
    assert (j.step, j.loss, j.accuracy, j.samples_per_s) == (400, 1.25, 0.5, 900.0)


# -- procs ----------------------------------------------------------------------------------

def test_procs_crud(reg):
    job = new_job(reg)
    for p in range(2):
        reg.add_proc(job.id, 1, p, host="localhost", role=f"worker-0-{p}", log_path=f"/l/1/{p}.log")
    reg.update_proc(job.id, 1, 0, pid=100, pgid=100, start_time=5.0, state=jobdb.RUNNING,
                    endpoint="ipc:///tmp/x", heartbeat=6.0, step=10)
    reg.update_proc(job.id, 1, 1, state=jobdb.FAILED, exit_code=3)
    p0, p1 = reg.procs(job.id)
    assert (p0.procs_id, p0.pid, p0.pgid, p0.state, p0.step, p0.endpoint) == (
        0, 100, 100, jobdb.RUNNING, 10, "ipc:///tmp/x")
    assert (p1.state, p1.exit_code, p1.signal, p1.role, p1.log_path) == (
        jobdb.FAILED, 3, None, "worker-0-1", "/l/1/1.log")
    assert p1.terminal and not p0.terminal
    # A second attempt: procs() shows the latest, all_procs() every one.
    reg.add_proc(job.id, 2, 0, host="node2", role="worker-0-0", log_path="/l/2/0.log")
    assert [(p.attempt, p.procs_id) for p in reg.procs(job.id)] == [(2, 0)]
    assert [(p.attempt, p.procs_id) for p in reg.procs(job.id, attempt=1)] == [(1, 0), (1, 1)]
    assert [(p.attempt, p.procs_id) for p in reg.all_procs(job.id)] == [(1, 0), (1, 1), (2, 0)]
    assert reg.procs(job.id, attempt=1)[0].as_dict()["pid"] == 100
    assert reg.procs(new_job(reg).id) == []
    with pytest.raises(ValueError, match="no updatable column colour, job_id"):
        reg.update_proc(job.id, 1, 0, colour="red", job_id=3)
    with pytest.raises(ValueError, match="unknown state"):
        reg.update_proc(job.id, 1, 0, state="ZOMBIE")
    with pytest.raises(ValueError, match="has no procs 9"):
        reg.update_proc(job.id, 1, 9, pid=1)
    with pytest.raises(ValueError, match="already has procs 0"):
        reg.add_proc(job.id, 1, 0, host="h", role="r", log_path="/l")


# -- reconcile ------------------------------------------------------------------------------

def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _running_job_with_master(reg: JobDB, pid: int, start: float) -> jobdb.Job:
    job = new_job(reg)
    reg.transition(job.id, jobdb.RUNNING)
    reg.set_master(job.id, pid, start)
    a = reg.begin_attempt(job.id)
    for p in range(3):
        reg.add_proc(job.id, a, p, host="localhost", role="worker", log_path=f"/l/{p}.log")
    reg.update_proc(job.id, a, 0, state=jobdb.RUNNING)
    reg.update_proc(job.id, a, 2, state=jobdb.SUCCEEDED, exit_code=0)
    return reg.job(job.id)


def test_reconcile_a_dead_master_makes_the_job_and_its_live_procs_lost(reg):
    master = _sleeper()
    start = psutil.Process(master.pid).create_time()
    job = _running_job_with_master(reg, master.pid, start)
    assert reg.reconcile(job).state == jobdb.RUNNING  # alive: unchanged
    master.kill()
    master.wait()
    lost = reg.reconcile(reg.job(job.id))
    assert lost.state == jobdb.LOST and lost.ended is not None
    assert lost.reason == (f"the job master (pid {master.pid}) is gone; "
                           "the job's processes may still be running")
    assert [p.state for p in reg.procs(job.id)] == [jobdb.LOST, jobdb.LOST, jobdb.SUCCEEDED]
    assert reg.reconcile(lost) == lost  # terminal: nothing more to do


def test_reconcile_a_zombie_master_is_gone(reg):
    master = _sleeper()
    start = psutil.Process(master.pid).create_time()
    job = _running_job_with_master(reg, master.pid, start)
    master.kill()
    try:
        deadline = time.time() + 5
        while psutil.Process(master.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.time() < deadline
            time.sleep(0.01)
        assert reg.reconcile(job).state == jobdb.LOST
    finally:
        master.wait()


def test_reconcile_a_reused_pid_is_not_the_master(reg):
    me = psutil.Process(os.getpid())
    job = _running_job_with_master(reg, me.pid, me.create_time() - 100.0)
    assert reg.reconcile(job).state == jobdb.LOST


def test_reconcile_a_live_master_changes_nothing(reg):
    me = psutil.Process(os.getpid())
    job = _running_job_with_master(reg, me.pid, me.create_time())
    fresh = reg.reconcile(job)
    assert fresh == reg.job(job.id) and fresh.state == jobdb.RUNNING and fresh.reason == ""
    assert [p.state for p in reg.procs(job.id)] == [jobdb.RUNNING, jobdb.PENDING, jobdb.SUCCEEDED]


def test_reconcile_a_pending_job_whose_master_never_started(reg):
    old, new = new_job(reg), new_job(reg)
    db = sqlite3.connect(reg.path)
    db.execute("UPDATE jobs SET submitted = ? WHERE id = ?", (time.time() - 31, old.id))
    db.commit()
    db.close()
    lost = reg.reconcile(reg.job(old.id))
    assert lost.state == jobdb.LOST and lost.reason == "the job master never started"
    assert reg.reconcile(new).state == jobdb.PENDING  # 30 s have not passed


def test_reconcile_does_not_overwrite_a_state_written_meanwhile(reg):
    master = _sleeper()
    job = _running_job_with_master(reg, master.pid, psutil.Process(master.pid).create_time())
    master.kill()
    master.wait()
    reg.transition(job.id, jobdb.SUCCEEDED)  # the master's last word landed first
    assert reg.reconcile(job).state == jobdb.SUCCEEDED  # `job` is the stale RUNNING row


# -- concurrency ----------------------------------------------------------------------------

_CHILD = """
import sys
from pathlib import Path
from runtime.jobs import jobdb
with jobdb.JobDB(Path(sys.argv[1])) as reg:
    j = reg.create_job(name="c", conf_path=None, conf_text="x", workspace=None, launcher="local",
                       hosts=["localhost"], nprocs=1, train_steps=1)
    assert reg.transition(j.id, jobdb.RUNNING)
    reg.add_proc(j.id, reg.begin_attempt(j.id), 0, host="localhost", role="w", log_path="/l")
    assert reg.transition(j.id, jobdb.SUCCEEDED)
    print(j.id)
"""


def test_twenty_concurrent_processes_each_create_and_finish_a_job(tmp_path):
    home = tmp_path / "fresh"  # not created yet: the first opens race on the schema too
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    kids = [subprocess.Popen([sys.executable, "-c", _CHILD, str(home)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
            for _ in range(20)]
    outs = [k.communicate(timeout=60) for k in kids]
    for k, (_out, err) in zip(kids, outs):
        assert k.returncode == 0, err
    ids = sorted(int(out) for out, _ in outs)
    assert ids == list(range(1, 21))
    with JobDB(home) as reg:
        jobs = reg.jobs()
        assert len(jobs) == 20 and {j.state for j in jobs} == {jobdb.SUCCEEDED}
        assert all(len(reg.procs(j.id)) == 1 for j in jobs)


# -- describe_exit --------------------------------------------------------------------------

@pytest.mark.parametrize("code, sig, running, words", [
    (0, None, False, "exited with code 0"),
    (3, None, False, "exited with code 3"),
    (None, signal.SIGKILL, False, "was killed by SIGKILL"),
    (-15, None, False, "was killed by SIGTERM"),
    (None, 200, False, "was killed by signal 200"),
    (None, None, True, "still running"),
    (None, None, False, "-"),
])
def test_describe_exit(code, sig, running, words):
    assert describe_exit(code, sig, running=running) == words


# -- logfile --------------------------------------------------------------------------------

def test_tail_text_is_the_last_bytes_as_text_and_never_an_error(tmp_path):
    log = tmp_path / "w.log"
    log.write_bytes(b"first\n" + b"z" * 5000 + b"\nbad \xff end\n")
    assert logfile.tail_text(log, 10) == "bad \ufffd end\n"
    assert logfile.tail_text(log, 10**6).startswith("first\n")
    assert logfile.tail_text(tmp_path / "missing.log") == ""


def test_tail_reads_the_last_lines_of_a_big_file(tmp_path):
    log = tmp_path / "w.log"
    lines = [f"line {i} " + "x" * (i % 300) for i in range(20000)]  # ~3 MB, many blocks
    log.write_text("\n".join(lines) + "\n")
    assert logfile.tail(log, 20) == lines[-20:]
    assert logfile.tail(log, 1) == lines[-1:]
    assert logfile.tail(log, 0) == []
    big = "y" * 200_000  # one line longer than a block
    log.write_text(f"a\n{big}\nlast without newline")
    assert logfile.tail(log, 2) == [big, "last without newline"]
    assert logfile.tail(log, 10) == ["a", big, "last without newline"]
    log.write_bytes(b"ok\r\nbad \xff byte\n")
    assert logfile.tail(log, 5) == ["ok", "bad \ufffd byte"]
    log.write_text("")
    assert logfile.tail(log, 5) == []


def test_tail_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "nope.log")):
        logfile.tail(tmp_path / "nope.log", 5)


def test_follow_yields_appended_lines_until_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(logfile, "POLL_INTERVAL", 0.01)
    log = tmp_path / "w.log"
    log.write_text("old 1\nold 2\n")
    following, done = threading.Event(), threading.Event()

    def writer():
        following.wait(10)  # follow() asks stop() only once it has reached the end
        with open(log, "a") as f:
            for i in range(5):
                f.write(f"new {i}\n")
                f.flush()
                time.sleep(0.01)
            f.write("partial")
        done.set()

    def stop():
        following.set()
        return done.is_set()

    t = threading.Thread(target=writer)
    t.start()
    got = list(logfile.follow(log, from_end=True, stop=stop))
    t.join()
    assert got == [f"new {i}" for i in range(5)] + ["partial"]
    assert list(logfile.follow(log, from_end=False, stop=lambda: True)) == (
        ["old 1", "old 2"] + [f"new {i}" for i in range(5)] + ["partial"])


def test_follow_waits_for_the_file_and_ends_when_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(logfile, "POLL_INTERVAL", 0.01)
    assert list(logfile.follow(tmp_path / "never.log", from_end=False, stop=lambda: True)) == []
    log = tmp_path / "later.log"
    created = threading.Event()

    def make():
        time.sleep(0.05)
        log.write_text("hello\n")
        created.set()

    t = threading.Thread(target=make)
    t.start()
    calls = []

    def stop():
        calls.append(1)
        return created.is_set() and len(calls) > 3

    assert list(logfile.follow(log, from_end=False, stop=stop)) == ["hello"]
    t.join()


# -- an active job holds its workspace ------------------------------------------------------

def test_an_active_job_holds_its_workspace_as_a_real_path(reg, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "link").symlink_to(ws)
    first = new_job(reg, name="mlp", workspace=str(ws))
    live = psutil.Process()
    reg.set_master(first.id, live.pid, live.create_time())
    for same in (str(tmp_path / "link"), str(ws) + "/", str(tmp_path / "link" / ".." / "ws")):
        with pytest.raises(UserError) as e:
            new_job(reg, name="other", workspace=same)
        assert str(e.value) == (f"workspace {ws} is in use by job {first.id} (mlp, PENDING); "
                                f"wait for it, kill it (singa kill {first.id}), or set another "
                                f"workspace")
    assert [j.id for j in reg.jobs()] == [first.id]  # nothing recorded
    reg.transition(first.id, jobdb.RUNNING)
    with pytest.raises(UserError, match=r"in use by job \d+ \(mlp, RUNNING\)"):
        reg.check_workspace(str(ws))
    new_job(reg, workspace=str(tmp_path / "elsewhere"))  # another workspace is free
    reg.transition(first.id, jobdb.SUCCEEDED)
    assert new_job(reg, workspace=str(ws)).state == jobdb.PENDING  # an ended job holds nothing


def test_a_job_whose_master_is_gone_does_not_hold_its_workspace(reg, tmp_path):
    p = _sleeper()
    held = _running_job_with_master(reg, p.pid, psutil.Process(p.pid).create_time())
    p.kill()
    p.wait()
    job = new_job(reg, workspace=held.workspace)
    assert job.state == jobdb.PENDING and reg.job(held.id).state == jobdb.LOST


def test_a_bug_of_the_caller_keeps_its_traceback_a_broken_file_does_not(reg):
    from runtime.jobs.jobdb_errors import JobDBError

    with pytest.raises(sqlite3.OperationalError, match="syntax error"):
        reg._db.execute("SELEKT 1")
    with pytest.raises(sqlite3.ProgrammingError):
        reg._db.execute("SELECT ?", (1, 2))
    reg._db.execute("UPDATE jobs SET hosts = 'not json'")  # no job yet: nothing to decode
    job = new_job(reg)
    reg._db.execute("UPDATE jobs SET options = '{' WHERE id = ?", (job.id,))
    with pytest.raises(JobDBError, match=rf"job {job.id} has an undecodable 'options' value"):
        reg.jobs()


# -- the master's own heartbeat -------------------------------------------------------------

def test_a_version_1_registry_is_migrated_and_keeps_its_jobs(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    db = sqlite3.connect(home / "jobs.db")
    # version 1: the columns from master_heartbeat on (versions 2 and 3) and the arrays table were not there
    v1 = re.sub(r",\n    master_heartbeat REAL.*?\n\);", "\n);", jobdb_schema._SCHEMA, flags=re.S)
    v1 = v1[:v1.index("CREATE TABLE IF NOT EXISTS arrays")]
    assert "master_heartbeat" not in v1 and "priority" not in v1
    db.executescript(v1)
    db.execute("INSERT INTO jobs(name, state, submitted) VALUES ('old', 'SUCCEEDED', 1.0)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with JobDB(home) as reg:
        job = reg.job(1)
        assert (job.name, job.state, job.master_heartbeat) == ("old", jobdb.SUCCEEDED, None)
        assert reg.master_beat(new_job(reg).id) == jobdb.PENDING
    db = sqlite3.connect(home / "jobs.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == jobdb.SCHEMA_VERSION
    assert tuple(r[1] for r in db.execute("PRAGMA table_info(jobs)")) == jobdb.JOB_COLUMNS
    db.close()


def test_a_version_3_registry_gains_the_slot_hold(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    db = sqlite3.connect(home / "jobs.db")
    db.executescript(jobdb_schema._SCHEMA.replace(",\n    held_until REAL", ""))
    db.execute("INSERT INTO jobs(name, state, submitted) VALUES ('queued', 'QUEUED', 1.0)")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    with JobDB(home) as reg:
        assert (reg.job(1).state, reg.job(1).held_until) == (jobdb.QUEUED, None)
    db = sqlite3.connect(home / "jobs.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == jobdb.SCHEMA_VERSION
    assert tuple(r[1] for r in db.execute("PRAGMA table_info(jobs)")) == jobdb.JOB_COLUMNS
    db.close()


def _age_beat(reg: JobDB, job_id: int, seconds: float) -> None:
    db = sqlite3.connect(reg.path)
    db.execute("UPDATE jobs SET master_heartbeat = ? WHERE id = ?", (time.time() - seconds, job_id))
    db.commit()
    db.close()


def test_reconcile_a_silent_master_makes_the_job_lost_though_its_pid_lives(reg, tmp_path):
    me = psutil.Process(os.getpid())
    job = _running_job_with_master(reg, me.pid, me.create_time())
    assert reg.master_beat(job.id) == jobdb.RUNNING
    _age_beat(reg, job.id, 9)
    assert reg.reconcile(reg.job(job.id)).state == jobdb.RUNNING  # 10 s have not passed
    # procs 0 still runs here; procs 1 stopped itself for want of its master
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    orphan = tmp_path / "orphan.log"
    orphan.write_text("Train @ step 5\nsinga: no word from the job master at ipc:///x for 5 s; "
                      "stopping this process\n")
    gone = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    gone_start = psutil.Process(gone.pid).create_time()
    gone.wait()
    try:
        reg.update_proc(job.id, 1, 0, pid=alive.pid, pgid=alive.pid,
                        start_time=psutil.Process(alive.pid).create_time())
        reg.update_proc(job.id, 1, 1, state=jobdb.RUNNING, pid=gone.pid, pgid=gone.pid,
                        start_time=gone_start, log_path=str(orphan))
        _age_beat(reg, job.id, 12.4)
        lost = reg.reconcile(reg.job(job.id))
        assert lost.state == jobdb.LOST and lost.ended is not None
        assert lost.reason == f"the job master, pid {me.pid}, has not answered for 12 s"
        procs = reg.procs(job.id)
        assert [p.state for p in procs] == [jobdb.RUNNING, jobdb.FAILED, jobdb.SUCCEEDED]
        assert procs[1].exit_code == orphans.ORPHAN_EXIT
    finally:
        alive.kill()
        alive.wait()
    # a LOST job's process that was still running is looked at again
    assert reg.reconcile(reg.job(job.id)).state == jobdb.LOST
    assert [p.state for p in reg.procs(job.id)] == [jobdb.LOST, jobdb.FAILED, jobdb.SUCCEEDED]


def test_reconcile_a_pending_job_whose_live_master_never_beat(reg):
    me = psutil.Process(os.getpid())
    job = new_job(reg)
    reg.set_master(job.id, me.pid, me.create_time())
    assert reg.reconcile(reg.job(job.id)).state == jobdb.PENDING
    db = sqlite3.connect(reg.path)
    db.execute("UPDATE jobs SET submitted = ? WHERE id = ?", (time.time() - 31, job.id))
    db.commit()
    db.close()
    lost = reg.reconcile(reg.job(job.id))
    assert lost.state == jobdb.LOST
    assert lost.reason == f"the job master, pid {me.pid}, has not answered for 31 s"
