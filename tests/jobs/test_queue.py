"""The queue with real jobs: admission by cores and by memory, FIFO within
priority, dependencies that succeed or are cancelled, kill of a queued job,
Ctrl-C on a queued foreground submit, and a LOST master releasing its slots.

Each test has its own registry (SINGA_HOME) whose `hosts` file sets this
host's slots, so the queue does not depend on the cores of the machine."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.jobs import jobdb, pgroup
from tests.jobs.test_supervision import job_conf, wait_for


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    (h / "hosts").write_text("localhost slots=1\n")
    return h


@pytest.fixture
def reg(home: Path):
    with jobdb.JobDB(home) as r:
        yield r
    # a failed test must not leave jobs running
    with jobdb.JobDB(home) as r:
        from runtime.jobs.kill import kill_job

        for j in r.jobs(jobdb.ACTIVE):
            kill_job(r, j.id, grace=1.0, reason="left by the test")


def singa(home: Path, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=cwd,
                          env=dict(os.environ, SINGA_HOME=str(home)), capture_output=True,
                          text=True, timeout=timeout)


def submit(home: Path, conf: Path, *args: str) -> int:
    r = singa(home, "submit", "--detach", "--name", conf.stem, str(conf), *args, cwd=conf.parent)
    assert r.returncode == 0, r.stderr
    return int(re.search(r"Submitted job (\d+)", r.stdout).group(1))


def state(reg: jobdb.JobDB, job_id: int, want: str | set[str], timeout: float = 60) -> jobdb.Job:
    wanted = {want} if isinstance(want, str) else want
    return wait_for(lambda: (lambda j: j if j.state in wanted else None)(reg.reconcile(reg.job(job_id))),
                    timeout, f"job {job_id} to be {'/'.join(sorted(wanted))}")


def test_a_job_waits_for_a_core_and_starts_when_the_one_ahead_ends(tmp_path, home, reg):
    a = submit(home, job_conf(tmp_path, "a"))  # runs until killed
    b = submit(home, job_conf(tmp_path, "b", steps=40))
    job_b = reg.job(b)
    assert job_b.state == jobdb.QUEUED
    assert job_b.reason == "waiting for 1 core on localhost; next in line"
    assert job_b.demand == {"localhost": {"cores": 1, "mem": job_b.demand["localhost"]["mem"],
                                          "procs": 1, "threads": 1}}
    out = singa(home, "list", cwd=tmp_path).stdout
    assert re.search(rf"^{b} +b +QUEUED .* 1 core on localhost; next in line$", out, re.M), out
    view = singa(home, "view", str(b), cwd=tmp_path).stdout
    assert "state:     QUEUED: waiting for 1 core on localhost; next in line" in view
    assert "resources: localhost: 1 core" in view
    assert singa(home, "kill", str(a), cwd=tmp_path).returncode == 0
    job_a = reg.job(a)
    assert job_a.state == jobdb.KILLED and job_a.held_until is None  # released once stopped
    job_b = state(reg, b, jobdb.SUCCEEDED)
    assert job_b.admitted is not None and job_b.admitted >= job_a.ended
    assert job_b.started >= job_b.admitted


def test_admission_by_memory(tmp_path, home, reg):
    from runtime.config import load_job

    conf = job_conf(tmp_path, "m1", steps=10**6)
    need = load_job(str(conf), submit=True).validation.memory[0].total
    (home / "hosts").write_text(f"localhost slots=4 mem={int(need * 1.5) // 1024}K\n")
    a = submit(home, conf)
    b = submit(home, job_conf(tmp_path, "m2", steps=20))
    state(reg, a, jobdb.RUNNING)
    job_b = reg.job(b)
    assert job_b.state == jobdb.QUEUED
    assert re.fullmatch(r"waiting for [\d.]+ [KM]iB of memory on localhost; next in line",
                        job_b.reason), job_b.reason
    assert singa(home, "kill", str(a), cwd=tmp_path).returncode == 0
    assert state(reg, b, jobdb.SUCCEEDED).state == jobdb.SUCCEEDED


def test_priority_goes_first_then_submission_order(tmp_path, home, reg):
    a = submit(home, job_conf(tmp_path, "a"))
    state(reg, a, jobdb.RUNNING)
    low = submit(home, job_conf(tmp_path, "low", steps=20))
    first = submit(home, job_conf(tmp_path, "first", steps=20), "--priority", "5")
    second = submit(home, job_conf(tmp_path, "second", steps=20), "--priority", "5")
    out = singa(home, "list", "--state", "QUEUED", cwd=tmp_path).stdout
    ids = [int(line.split()[0]) for line in out.splitlines()[1:]]
    assert ids == [first, second, low], out
    assert reg.job(second).reason == "waiting for 1 core on localhost; 1 job ahead"
    assert reg.job(low).reason == "waiting for 1 core on localhost; 2 jobs ahead"
    singa(home, "kill", str(a), cwd=tmp_path)
    jobs = {i: state(reg, i, jobdb.SUCCEEDED, timeout=90) for i in (first, second, low)}
    assert jobs[first].admitted < jobs[second].admitted < jobs[low].admitted


def test_after_ok_starts_once_the_parent_succeeded(tmp_path, home, reg):
    (home / "hosts").write_text("localhost slots=2\n")
    a = submit(home, job_conf(tmp_path, "a", steps=300))
    b = submit(home, job_conf(tmp_path, "b", steps=10), "--after", str(a))
    job_b = reg.job(b)
    assert job_b.state == jobdb.QUEUED and job_b.after == [[a, "ok"]]
    assert job_b.reason == f"waiting for job {a} (a) to succeed"
    job_a = state(reg, a, jobdb.SUCCEEDED)
    job_b = state(reg, b, jobdb.SUCCEEDED)
    assert job_b.admitted >= job_a.ended


def test_after_a_failed_parent_the_chain_is_cancelled_and_never_starts(tmp_path, home, reg):
    (home / "hosts").write_text("localhost slots=2\n")
    bad = job_conf(tmp_path, "bad", steps=1000)
    bad.write_text(re.sub(r"base_lr: [\d.e-]+", "base_lr: 1e12", bad.read_text()))
    a = submit(home, bad)
    b = submit(home, job_conf(tmp_path, "b", steps=10), "--after", f"{a}:ok")
    c = submit(home, job_conf(tmp_path, "c", steps=10), "--after", f"{b}")
    d = submit(home, job_conf(tmp_path, "d", steps=10), "--after", f"{a}:any")
    assert state(reg, a, jobdb.FAILED).reason
    job_b = state(reg, b, jobdb.CANCELLED, timeout=10)
    assert job_b.reason == (f"job {a} (bad) ended FAILED, so --after {a}:ok can no longer "
                            "hold (it needs SUCCEEDED)")
    job_c = state(reg, c, jobdb.CANCELLED, timeout=10)
    assert job_c.reason.startswith(f"job {b} (b) ended CANCELLED")
    for j in (job_b, job_c):
        assert j.attempts == 0 and j.started is None and reg.all_procs(j.id) == []
        wait_for(lambda j=j: not pgroup.alive(j.master_pid, j.master_start), 10, "its master to exit")
    assert state(reg, d, jobdb.SUCCEEDED).state == jobdb.SUCCEEDED  # :any starts anyway
    # a dependency on a job that does not exist is refused before anything is made
    r = singa(home, "submit", "--detach", str(job_conf(tmp_path, "e")), "--after", "999",
              cwd=tmp_path)
    assert r.returncode == 2 and "--after 999: no job 999 in the registry" in r.stderr
    r = singa(home, "submit", "--detach", str(job_conf(tmp_path, "e")), "--after", "1:soon",
              cwd=tmp_path)
    assert r.returncode == 2 and "expected JOB[:ok|:any]" in r.stderr
    assert len(reg.jobs()) == 4


def test_kill_of_a_queued_job(tmp_path, home, reg):
    a = submit(home, job_conf(tmp_path, "a"))
    b = submit(home, job_conf(tmp_path, "b"))
    assert reg.job(b).state == jobdb.QUEUED
    r = singa(home, "kill", str(b), cwd=tmp_path)
    assert r.returncode == 0 and f"job {b} KILLED" in r.stdout
    job_b = reg.job(b)
    assert job_b.state == jobdb.KILLED
    assert job_b.reason == "killed with singa kill while queued; it never started"
    wait_for(lambda: not pgroup.alive(job_b.master_pid, job_b.master_start), 10, "its master to exit")
    assert reg.all_procs(b) == [] and job_b.started is None
    assert reg.job(a).state in (jobdb.PENDING, jobdb.RUNNING)  # the other job is untouched
    singa(home, "kill", str(a), cwd=tmp_path)


def test_ctrl_c_on_a_queued_foreground_submit_withdraws_it(tmp_path, home, reg):
    a = submit(home, job_conf(tmp_path, "a"))
    conf = job_conf(tmp_path, "b")
    fg = subprocess.Popen([sys.executable, "-m", "singa_cli.main", "submit", "--name", "b", str(conf)],
                          cwd=tmp_path, env=dict(os.environ, SINGA_HOME=str(home)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = wait_for(lambda: next((j.id for j in reg.jobs() if j.name == "b"), None), 30, "job b")
    wait_for(lambda: reg.job(b).reason.startswith("waiting for"), 30, "job b to be queued")
    time.sleep(0.5)  # the follower has said so
    fg.send_signal(signal.SIGINT)
    out, err = fg.communicate(timeout=60)
    assert fg.returncode == 130, err
    assert f"singa: job {b} QUEUED: waiting for 1 core on localhost; next in line" in err
    job_b = reg.job(b)
    assert job_b.state == jobdb.KILLED and job_b.reason.endswith("while queued; it never started")
    assert reg.all_procs(b) == []
    singa(home, "kill", str(a), cwd=tmp_path)


def test_a_lost_master_releases_its_slots(tmp_path, home, reg):
    a = submit(home, job_conf(tmp_path, "a"))
    job_a = state(reg, a, jobdb.RUNNING)
    b = submit(home, job_conf(tmp_path, "b", steps=10))
    assert reg.job(b).state == jobdb.QUEUED
    os.kill(job_a.master_pid, signal.SIGKILL)
    # nobody runs a CLI command: b's own waiting master finds a's master gone
    job_b = state(reg, b, jobdb.SUCCEEDED, timeout=60)
    job_a = reg.job(a)
    assert job_a.state == jobdb.LOST and "is gone" in job_a.reason
    assert job_b.admitted >= job_a.ended


def test_the_rbm_example_submits_its_chain_with_after_and_returns_at_once(tmp_path, home, reg):
    root = Path(__file__).resolve().parents[2]
    if not (root / "examples/mnist/train_data.bin").exists():
        pytest.skip("Fashion-MNIST is not imported: run bin/setup (singa data fetch)")
    (home / "hosts").write_text("localhost slots=2\n")
    env = dict(os.environ, SINGA_HOME=str(home),
               SINGA=str(Path(sys.executable).with_name("singa")))
    r = subprocess.run([str(root / "examples/rbm/run.sh")], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ids = [int(i) for i in re.findall(r"job (\d+)", r.stdout)]
    jobs = [j for j in reg.jobs() if j.name in ("rbm1", "rbm2", "rbm3", "rbm4", "autoencoder")]
    assert [j.name for j in jobs] == ["rbm1", "rbm2", "rbm3", "rbm4", "autoencoder"], r.stdout
    assert ids[0] == jobs[0].id
    for before, after in zip(jobs, jobs[1:]):
        assert after.after == [[before.id, "ok"]]
        assert after.state == jobdb.QUEUED
        assert after.reason == f"waiting for job {before.id} ({before.name}) to succeed"
    # stopping the first stage cancels the rest of the chain, none of which started
    assert singa(home, "kill", str(jobs[0].id), cwd=tmp_path).returncode == 0
    for j in jobs[1:]:
        assert state(reg, j.id, jobdb.CANCELLED, timeout=10).attempts == 0


def test_an_ended_job_holds_its_slots_until_its_processes_have_stopped(tmp_path):
    from tests.jobs.test_registry import new_job

    caps = {"capacity": {"localhost": {"cores": 2, "mem": None}}}
    two = {"localhost": {"cores": 2, "mem": 0, "procs": 2, "threads": 1}}
    with jobdb.JobDB(tmp_path / "h") as reg:
        a = new_job(reg, demand=two, options=caps)
        b = new_job(reg, demand=two, options=caps)
        assert (reg.job(a.id).state, reg.job(b.id).state) == (jobdb.PENDING, jobdb.QUEUED)
        # a failed; its other processes are being stopped (up to the grace)
        reg.transition(a.id, jobdb.FAILED, "process 1 failed", hold=30.0)
        assert reg.job(a.id).held_until is not None
        assert not reg.schedule() and reg.job(b.id).state == jobdb.QUEUED
        reg.release(a.id)
        assert reg.job(b.id).state == jobdb.PENDING and reg.job(a.id).held_until is None
        # a hold runs out by itself: a master that died while stopping holds nothing for ever
        c = new_job(reg, demand=two, options=caps)
        reg.transition(b.id, jobdb.KILLED, "killed", hold=0.2)
        assert reg.job(c.id).state == jobdb.QUEUED
        time.sleep(0.3)
        assert reg.schedule() and reg.job(c.id).state == jobdb.PENDING
        # a job that succeeded has no process left: its slots pass on at once
        d = new_job(reg, demand=two, options=caps)
        reg.transition(c.id, jobdb.SUCCEEDED)
        assert reg.job(d.id).state == jobdb.PENDING
