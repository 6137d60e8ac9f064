"""Jobs started by an external engine: `--launcher mpi` (mpirun), each
process taking its rank from the environment the engine sets, against
tests/jobs/fake_engine.py, which runs the tasks on this host with the
engine's environment and command-line contract. Slurm is tested against a
real Slurm in tests/slurm; what remains here for it is the error no real
Slurm can give: not being installed."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.jobs import jobdb
from tests.jobs.test_supervision import ended, job_conf, nothing_left, submit_detached

FAKE = Path(__file__).with_name("fake_engine.py")


@pytest.fixture
def engines(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mpirun",):
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


def test_mpirun_job_takes_ranks_from_open_mpi(engines, tmp_path, reg):
    conf = job_conf(tmp_path, "mpi", "nworker_groups: 2 nworkers_per_group: 2", steps=30)
    job_id = submit_detached(conf, "--launcher", "mpi")
    job = ended(reg, job_id)
    assert job.state == jobdb.SUCCEEDED, job.reason
    procs = reg.procs(job_id)
    assert [p.procs_id for p in procs] == [0, 1, 2, 3]
    assert len({p.pid for p in procs}) == 4
    assert "Test @ step 30" in Path(procs[0].log_path).read_text()
    nothing_left(reg, job_id)


def test_engine_missing_is_a_clear_error(tmp_path):
    """Slurm not installed (a PATH without it): exit 2 before anything exists."""
    conf = job_conf(tmp_path, "nompi", "nworkers_per_group: 2", steps=3)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    r = subprocess.run([sys.executable, "-m", "singa_cli.main", "submit", str(conf), "--launcher",
                        "slurm"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2
    assert re.search(r"--launcher slurm: srun is not on the PATH", r.stderr)
