"""The job master's supervision, as fault drills with real processes on this
host: a worker, a server or the master killed, a process gone silent, a full
disk, restarts from the latest checkpoint, several jobs at once. Each must
end in the right state with a reason naming the process, and leave no
process behind."""
from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.jobs import jobdb, pgroup
from tests.test_training import make_conf


def job_conf(tmp: Path, name: str, cluster: str = "", steps: int = 10**6, ckpt_freq: int = 0,
             workspace: str | None = None) -> Path:
    ws = workspace or f"{tmp}/{name}.ws"
    p = make_conf(tmp, name + ".conf", steps=steps, test_freq=steps, ckpt_freq=ckpt_freq,
                  workspace=ws)
    text = p.read_text().replace(f'cluster {{ workspace: "{ws}" }}',
                                 f'cluster {{ workspace: "{ws}" {cluster} }}')
    assert cluster in text
    p.write_text(text)
    return p


def singa(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def submit_detached(conf: Path, *args: str) -> int:
    r = singa("submit", "--detach", str(conf), *args, cwd=conf.parent)
    assert r.returncode == 0, r.stderr
    return int(re.search(r"Submitted job (\d+)", r.stdout).group(1))


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ended(reg: jobdb.JobDB, job_id: int, timeout: float = 60) -> jobdb.Job:
    return wait_for(lambda: (lambda j: j if j.terminal else None)(reg.reconcile(reg.job(job_id))),
                    timeout, f"job {job_id} to end")


def training(reg: jobdb.JobDB, job_id: int, steps: int = 5) -> list[jobdb.Proc]:
    wait_for(lambda: reg.job(job_id).state == jobdb.RUNNING and (reg.job(job_id).step or 0) >= steps,
             60, f"job {job_id} to train")
    return reg.procs(job_id)


def nothing_left(reg: jobdb.JobDB, job_id: int, timeout: float = 15) -> None:
    job = reg.job(job_id)
    procs = reg.all_procs(job_id)
    wait_for(lambda: not any(pgroup.members(p.pgid, p.start_time) for p in procs if p.pgid)
             and not pgroup.alive(job.master_pid, job.master_start), timeout,
             f"every process of job {job_id} to exit")


@pytest.fixture
def reg():
    with jobdb.JobDB() as r:
        yield r


def test_a_job_runs_to_success_and_its_files_are_private(tmp_path, reg):
    conf = job_conf(tmp_path, "ok", "nworkers_per_group: 2", steps=30)
    job_id = submit_detached(conf)
    job = ended(reg, job_id)
    assert job.state == jobdb.SUCCEEDED, job.reason
    assert job.step == 30 and job.loss is not None and job.accuracy is not None
    procs = reg.procs(job_id)
    assert [p.state for p in procs] == [jobdb.SUCCEEDED, jobdb.SUCCEEDED]
    assert all(p.exit_code == 0 and p.heartbeat and p.pgid == p.pid for p in procs)
    ws = Path(job.workspace)
    assert (ws / "metrics.jsonl").exists() and list(ws.glob("tensorboard/group0/events.out.*"))
    for path in [reg.path, *Path(job.log_dir).rglob("*"), ws, *ws.rglob("*")]:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    nothing_left(reg, job_id)


@pytest.mark.parametrize("role, cluster", [
    ("worker 0/1", "nworkers_per_group: 2"),
    ("server 0/0", "server_worker_separate: true"),
])
def test_sigkill_of_a_process_fails_the_job_within_5s(tmp_path, reg, role, cluster):
    conf = job_conf(tmp_path, "victim", cluster)
    job_id = submit_detached(conf)
    procs = training(reg, job_id)
    victim = next(p for p in procs if role in p.role)
    os.kill(victim.pid, signal.SIGKILL)
    t0 = time.monotonic()
    job = ended(reg, job_id, timeout=10)
    assert time.monotonic() - t0 <= 5.0
    assert job.state == jobdb.FAILED
    assert job.reason.startswith(f"process {victim.procs_id} on localhost, pid {victim.pid} "
                                 f"({victim.role}) was killed by SIGKILL"), job.reason
    nothing_left(reg, job_id)
    states = {p.procs_id: p.state for p in reg.procs(job_id)}
    assert states.pop(victim.procs_id) == jobdb.FAILED and set(states.values()) == {jobdb.KILLED}
    v = singa("view", str(job_id), cwd=tmp_path)
    assert f"Failing process: procs {victim.procs_id}" in v.stdout, v.stdout


def test_a_silent_process_fails_the_job_within_5s(tmp_path, reg):
    conf = job_conf(tmp_path, "silent", "nworkers_per_group: 2")
    job_id = submit_detached(conf, "--grace", "1")
    victim = training(reg, job_id)[1]
    os.kill(victim.pid, signal.SIGSTOP)  # alive, but says nothing
    t0 = time.monotonic()
    job = ended(reg, job_id, timeout=10)
    assert time.monotonic() - t0 <= 5.0
    assert job.state == jobdb.FAILED
    assert re.search(r"process 1 on localhost, pid \d+ \(worker 0/1\) went silent: "
                     r"no heartbeat for 3\.\d s", job.reason), job.reason
    nothing_left(reg, job_id)


def test_the_master_killed_makes_the_job_lost_and_its_processes_exit(tmp_path, reg):
    conf = job_conf(tmp_path, "orphans", "nworkers_per_group: 2")
    job_id = submit_detached(conf)
    procs = training(reg, job_id)
    job = reg.job(job_id)
    os.kill(job.master_pid, signal.SIGKILL)
    wait_for(lambda: not pgroup.alive(job.master_pid, job.master_start), 5, "the master to die")
    r = singa("list", "--all", cwd=tmp_path)
    assert re.search(rf"^{job_id}\s+\S+\s+LOST\s", r.stdout, re.M), r.stdout
    job = reg.job(job_id)
    assert job.state == jobdb.LOST and f"pid {job.master_pid}" in job.reason
    # without their master the processes stop by themselves: no orphans
    wait_for(lambda: not any(pgroup.members(p.pgid, p.start_time) for p in procs), 15,
             "the processes to exit")
    assert "no word from the job master" in Path(procs[0].log_path).read_text()


def test_a_full_disk_fails_the_job_with_the_reason(tmp_path, reg):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a full disk) needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        conf = job_conf(tmp_path, "full", "nworkers_per_group: 2", steps=200, ckpt_freq=20,
                        workspace=str(disk / "ws"))
        (disk / "filler").write_bytes(b"\0" * 40_000)
        job_id = submit_detached(conf)
        job = ended(reg, job_id)
        assert job.state == jobdb.FAILED
        # both processes write into the workspace (worker 0 its checkpoint, worker 1
        # its .resume state): either may be the first to find the disk full
        assert re.match(r"process [01] on localhost", job.reason), job.reason
        assert "No space left on device" in job.reason, job.reason
        nothing_left(reg, job_id)
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_max_restarts_relaunches_from_the_latest_checkpoint(tmp_path, reg):
    conf = job_conf(tmp_path, "phoenix", "nworkers_per_group: 2", steps=3000, ckpt_freq=200)
    job_id = submit_detached(conf, "--max-restarts", "1")
    procs = training(reg, job_id)
    wait_for(lambda: list((tmp_path / "phoenix.ws" / "checkpoint").glob("step[1-9]*-worker0")), 60,
             "a checkpoint after step 0")
    os.kill(procs[1].pid, signal.SIGKILL)
    job = ended(reg, job_id, timeout=120)
    assert job.state == jobdb.SUCCEEDED, job.reason
    assert job.attempts == 2 and job.step == 3000
    first, second = reg.procs(job_id, 1), reg.procs(job_id, 2)
    assert first[1].state == jobdb.FAILED and [p.state for p in second] == [jobdb.SUCCEEDED] * 2
    # the first attempt's logs are kept; the second resumed from a checkpoint
    assert Path(first[0].log_path).exists() and first[0].log_path != second[0].log_path
    assert re.search(r"^Resumed from step [1-9]\d*00$", Path(second[0].log_path).read_text(), re.M)
    v = singa("view", str(job_id), cwd=tmp_path)
    assert "attempts:  2 (max restarts 1)" in v.stdout, v.stdout
    nothing_left(reg, job_id)


def test_kill_stops_every_process_and_is_final(tmp_path, reg):
    conf = job_conf(tmp_path, "stopme", "nworker_groups: 2")
    job_id = submit_detached(conf)
    training(reg, job_id)
    r = singa("kill", str(job_id), "--grace", "2", cwd=tmp_path)
    assert r.returncode == 0 and f"job {job_id} KILLED" in r.stdout, r.stderr
    job = reg.job(job_id)
    assert job.state == jobdb.KILLED and job.reason == "killed with singa kill"
    nothing_left(reg, job_id)
    assert reg.job(job_id).state == jobdb.KILLED  # the master did not write over it
    r = singa("kill", str(job_id), cwd=tmp_path)
    assert r.returncode == 0 and "already ended: KILLED" in r.stdout


def test_concurrent_submits_all_succeed(tmp_path, reg):
    """20 submits at once (two jobs per host and more): distinct ids, every job
    SUCCEEDED, no process left."""
    confs = [job_conf(tmp_path, f"c{i}", steps=5) for i in range(20)]
    runs = [subprocess.Popen([sys.executable, "-m", "singa_cli.main", "submit", "--detach", str(c)],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for c in confs]
    ids = []
    for p in runs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ids.append(int(re.search(r"Submitted job (\d+)", out).group(1)))
    assert len(set(ids)) == 20
    for job_id in ids:
        job = ended(reg, job_id, timeout=180)
        assert job.state == jobdb.SUCCEEDED, (job_id, job.reason)
        nothing_left(reg, job_id)


def test_submit_follows_a_failing_job_and_shows_why(tmp_path, reg):
    conf = job_conf(tmp_path, "doomed", "nworkers_per_group: 2")
    proc = subprocess.Popen([sys.executable, "-m", "singa_cli.main", "submit", str(conf)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = wait_for(lambda: next((j.id for j in reg.jobs() if j.conf_path == str(conf)), None),
                      30, "the job")
    victim = training(reg, job_id)[1]
    os.kill(victim.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Train @ step 0  Loss = " in out  # process 0's log, streamed
    assert (f"singa: job {job_id} FAILED: process 1 on localhost, pid {victim.pid} (worker 0/1) "
            "was killed by SIGKILL") in err, err
    assert f"--- last lines of process 1's log (localhost: {victim.log_path}) ---" in err
    assert f"singa: details: singa view {job_id}; logs: singa log {job_id}" in err
    nothing_left(reg, job_id)


def test_log_follows_a_running_job_until_it_ends(tmp_path, reg):
    conf = job_conf(tmp_path, "followed", "nworkers_per_group: 2", steps=400)
    job_id = submit_detached(conf)
    r = singa("log", str(job_id), "-f", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Test @ step 0") and "Test @ step 400  Loss = " in r.stdout
    assert reg.job(job_id).state == jobdb.SUCCEEDED
    tail = singa("log", str(job_id), "--tail", "1", cwd=tmp_path)
    assert tail.stdout.startswith("Server (0,0): ")


def test_the_progress_line_shows_step_loss_accuracy_rate_and_eta():
    import io

    from singa_cli.follow import Status

    now = time.time()
    job = jobdb.Job(**{**{f: None for f in jobdb.Job.__dataclass_fields__},
                   "id": 3, "state": jobdb.RUNNING, "train_steps": 1000, "step": 250, "loss": 0.5123,
                   "accuracy": 0.8125, "samples_per_s": 5120.0, "started": now - 10,
                   "options": {}, "hosts": [], "secret": None})
    err = io.StringIO()
    Status(err).show(job)
    line = err.getvalue()
    assert line.startswith("\r\x1b[K")
    assert ("job 3 RUNNING  step 250/1000  loss 0.5123  accuracy 0.8125  5,120 samples/s  "
            "ETA 0:00:3") in line  # 750 steps left at 25 steps/s: about 30 s


# ------------------------------------------------ a process's own reason --
BOOM = '''
from conf import job_pb2
from runtime import plugins
from runtime.neuralnet.layer import Layer


@plugins.register_layer("Boom")
class Boom(Layer):
    """The identity, until its fourth training batch (step 3)."""

    calls = 0

    def compute_feature(self, flag, srclayers):
        if flag & job_pb2.kTrain:
            if self.calls == 3:
                raise RuntimeError("boom at step 3")
            self.calls += 1
        self.data = srclayers[0].data_for(self)

    def compute_gradient(self, flag, srclayers):
        srclayers[0].set_grad(self, self.grad)
'''


@pytest.mark.parametrize("cluster", ["", "nworkers_per_group: 2"])
def test_an_exception_in_a_user_layer_is_the_jobs_reason(tmp_path, reg, cluster):
    """In the single-process Driver and in a worker thread of a node: the
    reason ends with the exception's line, the log holds its traceback."""
    (tmp_path / "boom.py").write_text(BOOM)
    conf = job_conf(tmp_path, "boom", cluster, steps=20)
    text = conf.read_text().replace(
        'layer { name: "relu1" type: kReLU srclayers: "ip1" }',
        'layer { name: "boom" type: kUserLayer user_type: "Boom" srclayers: "ip1" }\n'
        '  layer { name: "relu1" type: kReLU srclayers: "boom" }')
    assert "Boom" in text
    conf.write_text(text)
    job = ended(reg, submit_detached(conf, "--module", "boom.py"))
    assert job.state == jobdb.FAILED
    # either worker of the group may be the first to fail
    m = re.fullmatch(r"process (\d) on localhost, pid \d+ \(worker 0/\d(, server 0/0)?\): "
                     r"RuntimeError: boom at step 3", job.reason)
    assert m, job.reason
    log = Path(reg.procs(job.id)[int(m.group(1))].log_path).read_text()
    assert "Traceback (most recent call last):" in log
    assert 'raise RuntimeError("boom at step 3")' in log and "in compute_feature" in log
    nothing_left(reg, job.id)


@pytest.mark.parametrize("cluster", ["", "nworkers_per_group: 2"])
def test_a_truncated_resume_file_is_the_jobs_reason(tmp_path, reg, cluster):
    """The .resume is read before the process connects (several processes)
    or in the Driver (one): either way its error is the reason."""
    ws = tmp_path / "trunc.ws"
    conf = job_conf(tmp_path, "trunc", cluster, steps=10, ckpt_freq=5)
    first = ended(reg, submit_detached(conf))
    assert first.state == jobdb.SUCCEEDED, first.reason
    resume = ws / "checkpoint" / "step10-worker0.resume"
    resume.write_bytes(resume.read_bytes()[:100])
    conf.write_text(conf.read_text().replace("train_steps: 10", "train_steps: 20"))
    job = ended(reg, submit_detached(conf, "--resume"))
    assert job.state == jobdb.FAILED
    # every process of the job reads it: any may be the first to fail. The
    # checkpoint's checksum refuses it in one line (it was a zipfile.BadZipFile
    # traceback and "exited with code 1"); a user's error, so no traceback
    m = re.fullmatch(rf"process (\d) on localhost, pid \d+ \(worker 0/\d(, server 0/0)?\): "
                     rf"checkpoint {re.escape(str(resume))}: truncated: 100 of the \d+ bytes "
                     rf"written; .+", job.reason)
    assert m, job.reason
    log = Path(reg.procs(job.id)[int(m.group(1))].log_path).read_text()
    assert "Traceback (most recent call last):" not in log
    assert log.rstrip().splitlines()[-1].endswith(job.reason.split("): ", 1)[1])
    nothing_left(reg, job.id)


def test_the_log_fallback_reads_a_tracebacks_exception_line(tmp_path):
    """A process that died before it could tell the master: the reason comes
    from its log, whose exception line need not say "Error"."""
    from runtime.jobs.master import _last_error

    log = tmp_path / "procs-0.log"
    log.write_text("Train @ step 0  Loss = 1.1, accuracy = 0.3\n"
                   "Traceback (most recent call last):\n"
                   '  File "runtime/checkpoint.py", line 80, in load_resume_state\n'
                   "    with np.load(path) as z:  # no Error on this line\n"
                   "zipfile.BadZipFile: File is not a zip file\n")
    assert _last_error(log) == "zipfile.BadZipFile: File is not a zip file"
    log.write_text(log.read_text() + "singa: procs 0: zipfile.BadZipFile: File is not a zip file\n")
    assert _last_error(log) == "singa: procs 0: zipfile.BadZipFile: File is not a zip file"
    log.write_text("some ValueError went by\nall fine\n")
    assert _last_error(log) == "some ValueError went by"
