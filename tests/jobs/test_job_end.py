"""How a job's end is recorded and cleaned up, with real processes on this
host: a frozen job master reads LOST (not a stale RUNNING) with what became
of its processes, a job's ipc directory goes whatever way the job ends, and
a finished job shows its final step."""
from __future__ import annotations

import os
import re
import signal
import tempfile
from pathlib import Path

import pytest

from runtime.jobs import jobdb, pgroup
from tests.jobs.test_supervision import (  # noqa: F401
    ended,
    job_conf,
    nothing_left,
    reg,
    singa,
    submit_detached,
    training,
    wait_for,
)
from tests.test_training import make_conf


@pytest.fixture
def own_tmpdir(monkeypatch):
    """A TMPDIR of this test's own (short: ipc socket paths are limited to
    107 bytes), so other jobs' ipc directories do not count."""
    d = tempfile.mkdtemp(prefix="t", dir="/tmp")
    monkeypatch.setenv("TMPDIR", d)
    yield Path(d)
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def ipc_dirs(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.glob("singa-ipc-*"))


def test_a_frozen_master_makes_the_job_lost_and_its_processes_rows_say_they_stopped(
        tmp_path, reg, own_tmpdir):
    conf = job_conf(tmp_path, "frozen", "nworkers_per_group: 2")
    job_id = submit_detached(conf)
    procs = training(reg, job_id)
    job = reg.job(job_id)
    assert ipc_dirs(own_tmpdir)  # the job's, while it runs
    os.kill(job.master_pid, signal.SIGSTOP)
    try:
        # the processes give up on their master after 5 s; the registry after 10 s
        lost = wait_for(lambda: (lambda j: j if j.state == jobdb.LOST else None)(
            reg.reconcile(reg.job(job_id))), 25, "the job to read LOST")
        assert pgroup.alive(job.master_pid, job.master_start)  # frozen, not gone
        assert re.fullmatch(rf"the job master, pid {job.master_pid}, has not answered for "
                            r"1\d s", lost.reason), lost.reason
        r = singa("list", "--all", cwd=tmp_path)
        assert re.search(rf"^{job_id}\s+\S+\s+LOST\s", r.stdout, re.M), r.stdout
        wait_for(lambda: not any(pgroup.members(p.pgid, p.start_time) for p in procs), 15,
                 "the processes to exit")
        v = singa("view", str(job_id), cwd=tmp_path)
        assert re.search(rf"^  state:\s+LOST: the job master, pid {job.master_pid}, has not "
                         r"answered for 1\d s$", v.stdout, re.M), v.stdout
        rows = {p.procs_id: p for p in reg.procs(job_id)}
        assert [(p.state, p.exit_code) for p in rows.values()] == [(jobdb.FAILED, 3)] * 2
        assert len(re.findall(r"^\d+\s+localhost\s+\d+\s+.*FAILED\s.*exited with code 3 ",
                              v.stdout, re.M)) == 2, v.stdout
        assert "no word from the job master" in v.stdout  # the failing process's last words
        # the processes removed the job's ipc directory: its master could not
        assert ipc_dirs(own_tmpdir) == []
    finally:
        os.kill(job.master_pid, signal.SIGKILL)
        os.kill(job.master_pid, signal.SIGCONT)
    nothing_left(reg, job_id)
    assert reg.job(job_id).state == jobdb.LOST


def test_the_ipc_directory_goes_however_the_job_ends(tmp_path, reg, own_tmpdir):
    ok = submit_detached(job_conf(tmp_path, "ok", "nworkers_per_group: 2", steps=20))
    assert ended(reg, ok).state == jobdb.SUCCEEDED
    nothing_left(reg, ok)
    assert ipc_dirs(own_tmpdir) == []

    doomed = submit_detached(job_conf(tmp_path, "doomed", "nworkers_per_group: 2"))
    os.kill(training(reg, doomed)[1].pid, signal.SIGKILL)
    assert ended(reg, doomed).state == jobdb.FAILED
    nothing_left(reg, doomed)
    assert ipc_dirs(own_tmpdir) == []

    stopped = submit_detached(job_conf(tmp_path, "stopped", "nworker_groups: 2"))
    training(reg, stopped)
    r = singa("kill", str(stopped), "--grace", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    nothing_left(reg, stopped)
    assert reg.job(stopped).state == jobdb.KILLED
    assert ipc_dirs(own_tmpdir) == []


def test_a_finished_job_shows_its_final_step(tmp_path, reg):
    # no test at the end and a display every 5 steps: the last metric says step
    # 200, only the last heartbeat says 203
    conf = make_conf(tmp_path, "final.conf", steps=203, test_freq=0,
                     workspace=f"{tmp_path}/final.ws")
    text = conf.read_text().replace(f'workspace: "{tmp_path}/final.ws"',
                                    f'workspace: "{tmp_path}/final.ws" nworkers_per_group: 2')
    assert "nworkers_per_group: 2" in text
    conf.write_text(text)
    job_id = submit_detached(conf)
    job = ended(reg, job_id)
    assert job.state == jobdb.SUCCEEDED, job.reason
    assert job.step == 203
    r = singa("list", "--all", cwd=tmp_path)
    assert re.search(rf"^{job_id}\s+\S+\s+SUCCEEDED\s+2\s+\S+\s+203/203\s", r.stdout, re.M), r.stdout
