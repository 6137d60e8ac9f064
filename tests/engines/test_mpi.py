"""`--launcher mpi` against the real mpirun (Debian's openmpi-bin) on this
host: the CSV MLP of examples/user-updater (2 workers in 2 processes, its
Lion updater shipped with --module) to success and accuracy, `singa kill`
and the SIGKILL of one rank with nothing left behind, a normal user (no
--allow-run-as-root), and the sandblaster and downpour examples. The same
across network-namespace hosts: tests/cluster/test_mpi_multihost.py.

Skipped, with the reason, where mpirun is not installed (bin/setup installs
it as root).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from runtime.jobs import jobdb, pgroup
from tests.jobs.test_supervision import ended, singa, submit_detached, training, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "user-updater"
MNIST = ROOT / "examples" / "mnist"
FRAMEWORKS = ROOT / "examples" / "frameworks"

pytestmark = pytest.mark.skipif(
    shutil.which("mpirun") is None,
    reason="Open MPI's mpirun is not installed (Debian package openmpi-bin; bin/setup installs "
           "it when run as root)")


def csv_mlp(tmp: Path, name: str, steps: int = 300) -> Path:
    """examples/user-updater/job.conf (an MLP on three spirals read from CSV,
    2 workers, the Lion updater of lion.py) in `tmp` with its data and
    updater, `steps` long, tested at the end, with its workspace `name.ws`."""
    for f in ("lion.py", "data.py"):
        shutil.copy(EXAMPLE / f, tmp / f)
    if not (tmp / "train.csv").exists():
        subprocess.run([sys.executable, str(tmp / "data.py"), "--out", str(tmp)], check=True,
                       capture_output=True)
    text = (EXAMPLE / "job.conf").read_text()
    text = re.sub(r"^train_steps: \d+", f"train_steps: {steps}", text, flags=re.M)
    text = re.sub(r"^test_freq: \d+", f"test_freq: {min(steps, 300)}", text, flags=re.M)
    text = text.replace('workspace: "workspace"', f'workspace: "{tmp}/{name}.ws"')
    conf = tmp / f"{name}.conf"
    conf.write_text(text)
    return conf


def final_test_accuracy(workspace: str) -> float:
    """The accuracy of the last test record in the workspace's metrics.jsonl."""
    recs = [json.loads(line) for line in (Path(workspace) / "metrics.jsonl").read_text().splitlines()]
    tests = [r for r in recs if r.get("phase") == "test"]
    assert tests, recs
    return float(tests[-1]["accuracy"])


def mpirun_command(job: jobdb.Job, attempt: int = 1) -> str:
    """The mpirun command line the launcher wrote first in its launch log."""
    log = Path(str(job.workspace)) / f"singa-job-{job.id}" / f"attempt-{attempt}" / "procs-0.launch.log"
    first = log.read_text().splitlines()[0]
    assert first.startswith("singa: mpirun "), first
    return first


def job_processes(job_id: int) -> list[int]:
    """Live processes whose command line names the job's file: mpirun and its
    ranks (a check, never a way to pick processes to signal)."""
    mark = f"singa-job-{job_id}/job.pb"
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and mark in " ".join(p.info["cmdline"] or []):
            out.append(p.pid)
    return out


def nothing_left(reg: jobdb.JobDB, job_id: int, timeout: float = 15) -> None:
    """No rank's process group, no mpirun, no job master of the job."""
    job = reg.job(job_id)
    procs = reg.all_procs(job_id)
    wait_for(lambda: not job_processes(job_id)
             and not any(pgroup.members(p.pgid, p.start_time) for p in procs if p.pgid)
             and not pgroup.alive(job.master_pid, job.master_start), timeout,
             f"every process of job {job_id} to exit")


@pytest.fixture
def reg():
    with jobdb.JobDB() as r:
        yield r


def test_the_csv_mlp_succeeds_in_two_ranks(tmp_path, reg):
    conf = csv_mlp(tmp_path, "mlp")
    r = singa("submit", str(conf), "--module", "lion.py", "--launcher", "mpi", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = int(re.search(r"Submitted job (\d+)", r.stdout + r.stderr).group(1))
    job = reg.job(job_id)
    assert job.state == jobdb.SUCCEEDED, job.reason
    assert job.step == 300 and final_test_accuracy(job.workspace) >= 0.70
    assert job.accuracy is not None and job.accuracy >= 0.70
    procs = reg.procs(job_id)
    assert [p.state for p in procs] == [jobdb.SUCCEEDED] * 2
    assert len({p.pid for p in procs}) == 2 and all(p.pid == p.pgid for p in procs)
    cmd = mpirun_command(job)
    # ranks from mpirun's environment: no --procs on the node's command line
    assert "-np 2" in cmd and "--procs" not in cmd and "--job-file" in cmd
    assert ("--allow-run-as-root" in cmd) == (os.geteuid() == 0)
    hostfile = (Path(job.log_dir) / "mpi-hostfile").read_text().split()
    assert len(hostfile) == 2
    nothing_left(reg, job_id)


def test_kill_stops_mpirun_and_every_rank(tmp_path, reg):
    conf = csv_mlp(tmp_path, "long", steps=10**6)
    job_id = submit_detached(conf, "--module", "lion.py", "--launcher", "mpi")
    procs = training(reg, job_id)
    assert len(job_processes(job_id)) == 3  # mpirun and the 2 ranks
    k = singa("kill", str(job_id), "--grace", "3", cwd=tmp_path)
    assert k.returncode == 0, k.stderr
    assert f"job {job_id} KILLED" in k.stdout
    nothing_left(reg, job_id)
    assert reg.job(job_id).state == jobdb.KILLED
    assert {p.state for p in reg.procs(job_id)} == {jobdb.KILLED}
    assert all(not pgroup.alive(p.pid, p.start_time) for p in procs)


def test_sigkill_of_a_rank_fails_the_job_naming_rank_and_host(tmp_path, reg):
    conf = csv_mlp(tmp_path, "victim", steps=10**6)
    job_id = submit_detached(conf, "--module", "lion.py", "--launcher", "mpi")
    procs = training(reg, job_id)
    victim = next(p for p in procs if p.procs_id == 1)
    os.kill(victim.pid, signal.SIGKILL)
    job = ended(reg, job_id, timeout=10)
    assert job.state == jobdb.FAILED
    assert job.reason.startswith(f"rank 1 on {victim.host}, pid {victim.pid} (worker 0/1) "
                                 "was killed by SIGKILL"), job.reason
    nothing_left(reg, job_id)
    states = {p.procs_id: p.state for p in reg.procs(job_id)}
    assert states == {0: jobdb.KILLED, 1: jobdb.FAILED}
    v = singa("view", str(job_id), cwd=tmp_path)
    assert "Failing process: procs 1 (worker 0/1)" in v.stdout, v.stdout


def test_mpirun_killed_takes_its_ranks_with_it(tmp_path, reg):
    """mpirun SIGKILLed from outside cannot stop its ranks (each leads its
    own process group): the master does, and says mpirun was killed."""
    conf = csv_mlp(tmp_path, "orphans", steps=10**6)
    job_id = submit_detached(conf, "--module", "lion.py", "--launcher", "mpi")
    training(reg, job_id)
    mpirun = [pid for pid in job_processes(job_id) if psutil.Process(pid).name() == "mpirun"]
    assert len(mpirun) == 1
    os.kill(mpirun[0], signal.SIGKILL)
    job = ended(reg, job_id, timeout=10)
    assert job.state == jobdb.FAILED
    assert "ended with mpirun, which was killed by SIGKILL" in job.reason, job.reason
    nothing_left(reg, job_id)


def _as_user_argv(user: str) -> list[str] | None:
    """An argv prefix that runs a command as `user` in a private mount
    namespace where /root (0700 here, and holding the venv's interpreter)
    is a tmpfs with only the interpreter's tree bound in; None if this
    machine cannot (not root, no unshare/runuser)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("runuser"):
        return None
    script = ('set -e; keep=$(mktemp -d); mount --bind /root "$keep"; '
              'mount -t tmpfs -o mode=0755 singa-test-root /root; '
              'for d in "$keep"/.pyenv "$keep"/.local; do [ -d "$d" ] || continue; '
              'mkdir -p /root/"${d##*/}"; mount --bind "$d" /root/"${d##*/}"; done; '
              'exec runuser -u "$0" -- "$@"')
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, user]


@pytest.fixture
def user_dir():
    """A directory the user nobody owns, outside pytest's (0700) tmp tree."""
    d = Path(tempfile.mkdtemp(prefix="singa-mpi-user-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_normal_user_runs_without_allow_run_as_root(user_dir):
    prefix = _as_user_argv("nobody")
    if prefix is None:
        pytest.skip("running as another user needs root, unshare and runuser")
    conf = csv_mlp(user_dir, "mine")
    for path in [user_dir, *user_dir.rglob("*")]:
        shutil.chown(path, "nobody")
    env = {"HOME": str(user_dir), "SINGA_HOME": str(user_dir / "singa"),
           "PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]}
    r = subprocess.run([*prefix, "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                        sys.executable, "-m", "singa_cli.main", "submit", str(conf),
                        "--module", "lion.py", "--launcher", "mpi"],
                       cwd=user_dir, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    with jobdb.JobDB(user_dir / "singa") as reg:
        job = reg.jobs()[-1]
        assert job.state == jobdb.SUCCEEDED, job.reason
        assert "--allow-run-as-root" not in mpirun_command(job)
        assert final_test_accuracy(job.workspace) >= 0.70
        assert all(Path(p.log_path).owner() == "nobody" for p in reg.procs(job.id))


def framework_conf(tmp: Path, example: str, steps: int = 10) -> Path:
    """examples/frameworks/EXAMPLE.conf, `steps` long with a short test at
    the end, its data by absolute path and its workspace in `tmp`."""
    if not (MNIST / "train_data.bin").exists():
        pytest.skip("Fashion-MNIST is not imported: run bin/setup (singa data fetch)")
    text = (FRAMEWORKS / f"{example}.conf").read_text()
    for key, value in (("train_steps", steps), ("test_steps", 2), ("test_freq", steps),
                       ("disp_freq", 5)):
        text = re.sub(rf"^{key}: \d+", f"{key}: {value}", text, flags=re.M)
    text = text.replace('"../mnist/', f'"{MNIST}/')
    text = re.sub(r'workspace: "[^"]*"', f'workspace: "{tmp}/{example}.ws"', text)
    conf = tmp / f"{example}.conf"
    conf.write_text(text)
    return conf


@pytest.mark.parametrize("example, nprocs", [("sandblaster", 4), ("downpour", 6)])
def test_a_framework_example_runs_under_mpirun(tmp_path, reg, example, nprocs):
    conf = framework_conf(tmp_path, example)
    r = singa("submit", str(conf), "--launcher", "mpi", cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = int(re.search(r"Submitted job (\d+)", r.stdout + r.stderr).group(1))
    job = reg.job(job_id)
    assert job.state == jobdb.SUCCEEDED, job.reason
    assert f"-np {nprocs}" in mpirun_command(job)
    assert [p.state for p in reg.procs(job_id)] == [jobdb.SUCCEEDED] * nprocs
    assert "Test @ step 10  Loss = " in r.stdout
    nothing_left(reg, job_id)


def test_an_mpirun_that_is_not_open_mpi_is_refused(tmp_path, monkeypatch):
    """The options singa gives mpirun are Open MPI's: another mpirun (MPICH's
    hydra) is refused at submit, naming what it is. A fake stands for it:
    one MPI implementation is installed here."""
    fake = tmp_path / "bin" / "mpirun"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'HYDRA build details:'\necho '    Version: 4.0.2'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    conf = csv_mlp(tmp_path, "hydra")
    r = singa("submit", str(conf), "--module", "lion.py", "--launcher", "mpi", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--launcher mpi: the mpirun on the PATH is not Open MPI's (HYDRA build details:)" in r.stderr
