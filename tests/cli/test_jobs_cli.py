"""`singa list`, `singa view`, `singa status` as a user runs them: real
subprocesses on a real registry in a temporary SINGA_HOME, jobs written through
the registry API, masters that are real (live or dead) processes."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from runtime.jobs import jobdb

ROOT = Path(__file__).resolve().parents[2]
SECRET = "curve-secret-do-not-print"
COLUMNS = ["JOB ID", "NAME", "STATE", "PROCS", "HOSTS", "STEP", "STARTED", "ELAPSED"]


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "singa-home"


def singa(home: Path, *args: str, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, SINGA_HOME=str(home))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *(extra or []), "-m", "singa_cli.main", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def make_job(reg: jobdb.JobDB, name: str, hosts: list[str], **kw) -> jobdb.Job:
    return reg.create_job(name=name, conf_path=f"/exp/{name}/job.conf", conf_text=f"name: '{name}'",
                          workspace=f"/exp/{name}/ws", launcher="ssh", hosts=hosts,
                          nprocs=len(hosts), train_steps=1200, secret={"key": SECRET}, **kw)


def live_master(reg: jobdb.JobDB, job: jobdb.Job) -> None:
    me = psutil.Process()
    reg.set_master(job.id, me.pid, me.create_time())


@pytest.fixture
def jobs(home):
    """Four jobs: 1 RUNNING (live master), 2 PENDING, 3 SUCCEEDED, 4 FAILED."""
    with jobdb.JobDB(home) as reg:
        run = make_job(reg, "cifar10", ["node1.example.org", "node1.example.org", "node2.example.org"])
        reg.transition(run.id, jobdb.RUNNING)
        live_master(reg, run)
        reg.progress(run.id, 300, loss=1.25, accuracy=0.5, samples_per_s=800.0)
        pend = make_job(reg, "mnist", ["localhost"])
        live_master(reg, pend)
        done = make_job(reg, "done", ["localhost"])
        reg.transition(done.id, jobdb.RUNNING)
        reg.transition(done.id, jobdb.SUCCEEDED)
        bad = make_job(reg, "broken", ["localhost"])
        reg.transition(bad.id, jobdb.RUNNING)
        reg.transition(bad.id, jobdb.FAILED, "procs 1 exited with code 3")
    return {"running": run.id, "pending": pend.id, "succeeded": done.id, "failed": bad.id}


def table(out: str) -> tuple[str, list[str]]:
    lines = out.rstrip("\n").splitlines()
    return lines[0], lines[1:]


def assert_aligned(header: str, rows: list[str], columns: list[str]) -> None:
    starts = [header.index(c) for c in columns]
    assert starts == sorted(starts)
    for row in rows:
        for s in starts:
            assert row[s] != " " and (s == 0 or row[s - 1] == " "), (header, row)


def test_list_shows_the_active_jobs_in_aligned_columns(home, jobs):
    r = singa(home, "list")
    assert r.returncode == 0, r.stderr
    header, rows = table(r.stdout)
    assert [c for c in re.split(r"\s{2,}", header.strip())] == COLUMNS
    assert_aligned(header, rows, COLUMNS)
    assert [row.split()[0] for row in rows] == [str(jobs["running"]), str(jobs["pending"])]
    run = rows[0]
    assert " cifar10 " in run and " RUNNING " in run
    assert " node1,node2 " in run  # distinct, short names
    assert " 300/1200 " in run
    assert re.search(r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  +\d+:\d\d:\d\d$", run), run
    assert re.search(r" 3 +node1", run)  # PROCS
    pend = rows[1]
    assert " PENDING " in pend and " -/1200 " in pend and pend.rstrip().endswith("-")


def test_list_all_and_state_filters(home, jobs):
    r = singa(home, "list", "--all")
    assert r.returncode == 0, r.stderr
    header, rows = table(r.stdout)
    assert [row.split()[0] for row in rows] == [str(i) for i in sorted(jobs.values())]
    assert_aligned(header, rows, COLUMNS)
    for spelling in (["--state", "failed,Succeeded"], ["--state", "FAILED", "--state", "succeeded"]):
        r = singa(home, "list", *spelling)
        assert r.returncode == 0, r.stderr
        _, rows = table(r.stdout)
        assert [row.split()[0] for row in rows] == [str(jobs["succeeded"]), str(jobs["failed"])]
    r = singa(home, "list", "--state", "running,finished")
    assert r.returncode == 2
    assert "'finished'" in r.stderr
    assert "PENDING, RUNNING, SUCCEEDED, FAILED, KILLED, LOST" in r.stderr
    assert "Traceback" not in r.stderr
    r = singa(home, "list", "--state", "KILLED")
    assert r.returncode == 0 and "no jobs in state KILLED" in r.stdout


def test_list_of_an_empty_registry_says_how_to_see_ended_jobs(home):
    r = singa(home, "list")
    assert r.returncode == 0, r.stderr
    assert "no active jobs" in r.stdout and "singa list --all" in r.stdout
    with jobdb.JobDB(home) as reg:
        j = make_job(reg, "x", ["localhost"])
        reg.transition(j.id, jobdb.KILLED)
    r = singa(home, "list")
    assert "no active jobs" in r.stdout
    assert "KILLED" in singa(home, "list", "--all").stdout


def test_list_json_has_no_secret_and_no_conf_text(home, jobs):
    r = singa(home, "list", "--all", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert [j["id"] for j in got] == sorted(jobs.values())
    run = got[0]
    assert run["state"] == "RUNNING" and run["step"] == 300 and run["train_steps"] == 1200
    assert run["hosts"] == ["node1.example.org", "node1.example.org", "node2.example.org"]
    assert run["loss"] == 1.25 and run["elapsed"] >= 0
    assert all("secret" not in j and "conf_text" not in j for j in got)
    assert SECRET not in r.stdout
    assert [j["id"] for j in json.loads(singa(home, "list", "--json").stdout)] == [
        jobs["running"], jobs["pending"]]


def test_list_and_view_show_a_job_whose_master_died_as_lost(home):
    master = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = psutil.Process(master.pid).create_time()
    with jobdb.JobDB(home) as reg:
        job = make_job(reg, "orphan", ["localhost"])
        reg.transition(job.id, jobdb.RUNNING)
        reg.set_master(job.id, master.pid, start)
        reg.add_proc(job.id, reg.begin_attempt(job.id), 0, host="localhost", role="worker-0-0",
                     log_path=str(home / "w.log"))
        reg.update_proc(job.id, 1, 0, state=jobdb.RUNNING)
    assert " RUNNING " in singa(home, "list").stdout
    master.kill()
    master.wait()
    r = singa(home, "list")
    _, rows = table(r.stdout)
    assert len(rows) == 1 and " LOST " in rows[0]  # shown once more, as what it became
    r = singa(home, "view", str(job.id))
    assert f"the job master (pid {master.pid}) is gone" in r.stdout
    assert re.search(r"^0 .* LOST ", r.stdout, re.M)
    assert "no active jobs" in singa(home, "list").stdout


def test_view_shows_the_job_its_procs_and_earlier_attempts(home, jobs):
    jid = jobs["running"]
    now = time.time()
    with jobdb.JobDB(home) as reg:
        job = reg.job(jid)
        for attempt in (1, 2):
            assert reg.begin_attempt(jid) == attempt
            for p, host in enumerate(job.hosts):
                reg.add_proc(jid, attempt, p, host=host, role=f"worker-0-{p}",
                             log_path=f"{job.log_dir}/attempt-{attempt}/worker-0-{p}.log")
        reg.update_proc(jid, 1, 1, state=jobdb.FAILED, exit_code=3, pid=41)
        reg.update_proc(jid, 1, 0, state=jobdb.KILLED, signal=15)
        reg.update_proc(jid, 1, 2, state=jobdb.KILLED, signal=9)
        reg.update_proc(jid, 2, 0, state=jobdb.RUNNING, pid=4242, heartbeat=now - 0.4, step=300)
        reg.update_proc(jid, 2, 2, state=jobdb.SUCCEEDED, exit_code=0, pid=4244)
    r = singa(home, "view", str(jid))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith(f"Job {jid}: cifar10\n")
    for want in ("state:", "RUNNING", "/exp/cifar10/job.conf (sha256 ", "attempts:", "2 (max restarts 0)",
                 "workspace:", "/exp/cifar10/ws", "launcher:", "ssh", "log dir:",
                 "node1.example.org (2 procs), node2.example.org (1 proc)",
                 "step 300/1200, loss 1.2500, accuracy 0.5000, 800.0 samples/s"):
        assert want in out, want
    assert SECRET not in out
    lines = out.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith("PROCS "))
    assert lines[head - 1] == "Processes (attempt 2):"
    cols = ["PROCS", "HOST", "PID", "ROLE", "STATE", "HEARTBEAT", "STEP", "EXIT", "LOG"]
    assert re.split(r"\s{2,}", lines[head]) == cols
    rows = lines[head + 1:head + 4]
    assert_aligned(lines[head], rows, cols)
    assert re.match(r"0 +node1\.example\.org +4242 +worker-0-0 +RUNNING +0\.\ds ago +300 +"
                    r"still running +.*attempt-2/worker-0-0\.log$", rows[0]), rows[0]
    assert re.match(r"2 +node2\.example\.org +4244 +worker-0-2 +SUCCEEDED +- +- +exited with code 0",
                    rows[2]), rows[2]
    assert "Earlier attempts:" in out
    assert re.search(r"attempt 1: procs 1 \(worker-0-1\) on node1\.example\.org exited with code 3; "
                     r"logs in .*/attempt-1$", out, re.M)
    assert "Failing process" not in out  # the job is running


def test_status_is_view_and_json(home, jobs):
    jid = jobs["failed"]
    with jobdb.JobDB(home) as reg:
        reg.add_proc(jid, 1, 0, host="localhost", role="server-0-0", log_path="/nowhere/s.log")
        reg.add_proc(jid, 2, 0, host="localhost", role="server-0-0", log_path="/nowhere/s2.log")
    assert singa(home, "status", str(jid)).stdout == singa(home, "view", str(jid)).stdout
    r = singa(home, "view", str(jid), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["job"]["id"] == jid and doc["job"]["state"] == "FAILED"
    assert doc["job"]["reason"] == "procs 1 exited with code 3"
    assert "secret" not in doc["job"] and "conf_text" not in doc["job"]
    assert [(p["attempt"], p["procs_id"], p["role"]) for p in doc["procs"]] == [(2, 0, "server-0-0")]
    assert [p["attempt"] for p in doc["earlier_procs"]] == [1]
    assert SECRET not in r.stdout
    r = singa(home, "status", str(jid), "--json")
    assert json.loads(r.stdout)["job"]["id"] == jid


def test_an_unknown_job_exits_2_with_a_clear_message(home, jobs):
    for verb in ("view", "status"):
        r = singa(home, verb, "42")
        assert r.returncode == 2
        assert "no job 42 in the registry" in r.stderr and "singa list --all" in r.stderr
        assert str(home / "jobs.db") in r.stderr
        assert "Traceback" not in r.stderr
    r = singa(home, "view", "seven")
    assert r.returncode == 2 and "'seven' is not a valid integer" in r.stderr


def _failed_job(home: Path, host: str) -> tuple[int, Path]:
    with jobdb.JobDB(home) as reg:
        job = make_job(reg, "broken", [host, host])
        assert job.log_dir is not None  # set when the job is created
        reg.transition(job.id, jobdb.RUNNING)
        a = reg.begin_attempt(job.id)
        log = Path(job.log_dir) / "worker-0-1.log"
        log.write_text("".join(f"Train step-{i}, loss : 1.86, accuracy : 0.51\n" for i in range(28))
                       + "Traceback (most recent call last):\nValueError: shapes (64,10) mismatch\n")
        for p in range(2):
            reg.add_proc(job.id, a, p, host=host, role=f"worker-0-{p}",
                         log_path=str(Path(job.log_dir) / f"worker-0-{p}.log"))
        reg.update_proc(job.id, a, 0, state=jobdb.KILLED, signal=15, pid=101)
        reg.update_proc(job.id, a, 1, state=jobdb.FAILED, exit_code=1, pid=102)
        reg.transition(job.id, jobdb.FAILED, "procs 1 (worker-0-1) exited with code 1")
    return job.id, log


def test_view_of_a_failed_job_names_the_failing_proc_and_tails_its_log(home):
    jid, log = _failed_job(home, "localhost")
    r = singa(home, "view", str(jid))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Failing process: procs 1 (worker-0-1) on localhost exited with code 1" in out
    assert f"Last 20 lines of {log}:" in out
    tail = out.split(f"Last 20 lines of {log}:\n", 1)[1].splitlines()
    assert tail[-1] == "    ValueError: shapes (64,10) mismatch"
    assert len(tail) == 20 and tail[0] == "    Train step-10, loss : 1.86, accuracy : 0.51"
    assert "Train step-9," not in out
    assert re.search(r"^0 .* KILLED .* was killed by SIGTERM", out, re.M)


def test_view_of_a_failed_job_on_another_host_says_where_its_log_is(home):
    jid, log = _failed_job(home, "node9.example.org")
    r = singa(home, "view", str(jid))
    assert r.returncode == 0, r.stderr
    # the log is fetched over ssh; a host that cannot be reached is said plainly
    assert "(cannot show its log: cannot read the log of process 1 on node9.example.org" in r.stdout
    assert "cannot resolve host name 'node9.example.org'" in r.stdout


def test_list_and_view_import_nothing_heavy(home, jobs):
    heavy = re.compile(r"\| +(numpy|zmq|google|conf|runtime\.(?!errors|jobs\.jobdb$"
                       r"|jobs\.jobdb_errors$|jobs\.jobdb_schema$|jobs\.lockholder$|jobs\.logfile$"
                       r"|jobs\.queue$|jobs\.scheduler$|jobs\.states$|jobs\.pgroup$|units$|jobs$)[\w.]+)\s*$")
    for args in (["list", "--all"], ["view", str(jobs["failed"])], ["--help"]):
        r = singa(home, *args, extra=["-X", "importtime"])
        assert r.returncode == 0, r.stderr
        assert "runtime.jobs.jobdb" in r.stderr or args == ["--help"]
        bad = [l for l in r.stderr.splitlines() if heavy.search(l)]
        assert not bad, (args, bad)


def test_help_lists_every_verb_and_a_missing_verb_module_fails_only_when_used(monkeypatch):
    from singa_cli import main

    r = CliRunner().invoke(main.cli, ["--help"])
    assert r.exit_code == 0
    for verb in ("submit", "test", "list", "view", "status", "log", "kill", "hosts", "validate",
                 "data"):
        assert re.search(rf"^  {verb} ", r.output, re.M), verb
    monkeypatch.setitem(main.COMMANDS, "ghost", ("singa_cli.ghost_verb:ghost", "Haunt a job."))
    r = CliRunner().invoke(main.cli, ["--help"])
    assert r.exit_code == 0 and "Haunt a job." in r.output
    r = CliRunner().invoke(main.cli, ["ghost", "3"])
    assert r.exit_code == 2
    assert "'singa ghost' is not available" in r.output and "singa_cli.ghost_verb" in r.output
    monkeypatch.setitem(main.COMMANDS, "ghost", ("singa_cli.jobs:no_such", "Haunt a job."))
    r = CliRunner().invoke(main.cli, ["ghost"])
    assert r.exit_code == 2 and "has no command 'no_such'" in r.output
    r = CliRunner().invoke(main.cli, ["nonsense"])
    assert r.exit_code == 2 and "No such command" in r.output


def test_log_of_a_removed_log_is_the_same_error_with_and_without_follow(home):
    jid, log = _failed_job(home, "localhost")
    log.unlink()
    want = (f"singa: log file {log} does not exist (the process may not have started yet, "
            "or the log was removed)\n")
    for args in ([], ["-f"], ["-f", "--proc", "0"], ["-f", "--tail", "5"]):
        r = singa(home, "log", str(jid), *args)
        where = log if "--proc" not in args else log.with_name("worker-0-0.log")
        assert (r.returncode, r.stdout) == (2, ""), (args, r.stdout, r.stderr)
        assert r.stderr == want.replace(str(log), str(where)), (args, r.stderr)
