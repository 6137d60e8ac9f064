"""Jobs started by Slurm (`--launcher slurm`: a batch script submitted with
sbatch, processes started by srun), each process taking its rank from the
environment the engine sets. The tools on the PATH are
tests/jobs/fake_engine.py, which runs the tasks on this host with the
engine's environment and command-line contract. `--launcher mpi` is tested
against the real mpirun (tests/engines/test_mpi.py)."""
from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import pytest

from runtime.jobs import jobdb
from tests.jobs.test_supervision import ended, job_conf, nothing_left, singa, submit_detached, training

FAKE = Path(__file__).with_name("fake_engine.py")


@pytest.fixture
def engines(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun", "squeue", "sacct", "scancel"):
        p = bin_dir / tool
        p.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" {tool} "$@"\n')
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ENGINE_DIR", str(tmp_path / "engine"))
    return bin_dir


@pytest.fixture
def reg():
    with jobdb.JobDB() as r:
        yield r


def test_slurm_job_runs_from_a_batch_script(engines, tmp_path, reg):
    conf = job_conf(tmp_path, "slurmy", "nworkers_per_group: 2", steps=30)
    job_id = submit_detached(conf, "--launcher", "slurm")
    job = ended(reg, job_id)
    assert job.state == jobdb.SUCCEEDED, job.reason
    assert job.external_id == "1001"  # the Slurm job id, mirrored
    script = (tmp_path / "slurmy.ws" / f"singa-job-{job_id}" / "attempt-1" / "job.sbatch").read_text()
    assert "#SBATCH --ntasks=2" in script and "srun --kill-on-bad-exit=1" in script
    assert "--procs" not in script and "--job-file" in script  # ranks come from srun
    procs = reg.procs(job_id)
    assert [p.state for p in procs] == [jobdb.SUCCEEDED] * 2
    assert "Test @ step 30  Loss = " in Path(procs[0].log_path).read_text()
    keys = Path(tmp_path / "slurmy.ws" / f"singa-job-{job_id}" / "job.pb.keys")
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    log = singa("log", str(job_id), "--proc", "0", cwd=tmp_path)
    assert "Test @ step 30" in log.stdout


def test_slurm_job_is_killed_with_scancel(engines, tmp_path, reg):
    conf = job_conf(tmp_path, "longslurm", "nworkers_per_group: 2")
    job_id = submit_detached(conf, "--launcher", "slurm")
    training(reg, job_id)
    r = singa("kill", str(job_id), "--grace", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert reg.job(job_id).state == jobdb.KILLED
    nothing_left(reg, job_id)


def test_engine_missing_is_a_clear_error(tmp_path):
    conf = job_conf(tmp_path, "nompi", "nworkers_per_group: 2", steps=3)
    r = singa("submit", str(conf), "--launcher", "slurm", cwd=tmp_path)
    if "sbatch is not on the PATH" not in r.stderr:
        pytest.skip("a real sbatch is installed here")
    assert r.returncode == 2
    assert re.search(r"--launcher slurm: sbatch is not on the PATH", r.stderr)
