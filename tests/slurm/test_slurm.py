"""`--launcher slurm` against a real one-node Slurm (slurmctld + slurmd +
munge, started by tests/slurm/conftest.py): the CSV MLP to success, the
layout sbatch gets, --slurm-opt, kill, a task's death, a job Slurm cannot
place, and a job inside an allocation (salloc)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.jobs import jobdb
from tests.jobs.test_supervision import ended, singa, submit_detached, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "user-updater"


@pytest.fixture
def reg():
    with jobdb.JobDB() as r:
        yield r


def csv_mlp(tmp: Path, steps: int = 300) -> Path:
    """The CSV MLP (examples/user-updater: Lion on three spirals, 2 workers
    in 2 processes) with `steps` steps, in `tmp`."""
    subprocess.run([sys.executable, str(EXAMPLE / "data.py"), "--out", str(tmp)], check=True,
                   capture_output=True)
    shutil.copy(EXAMPLE / "lion.py", tmp / "lion.py")
    text = (EXAMPLE / "job.conf").read_text()
    text = re.sub(r"train_steps: \d+", f"train_steps: {steps}", text)
    text = re.sub(r"test_freq: \d+", f"test_freq: {steps}", text)
    text = re.sub(r"disp_freq: \d+", "disp_freq: 50", text)
    conf = tmp / "mlp.conf"
    conf.write_text(text)
    return conf


def final_test_accuracy(workspace: Path) -> float:
    recs = [json.loads(line) for line in (workspace / "metrics.jsonl").read_text().splitlines()]
    tests = [r for r in recs if r.get("phase") == "test"]
    return float(max(tests, key=lambda r: r["step"])["accuracy"])


def test_csv_mlp_succeeds_under_slurm(clean_slurm, tmp_path, reg):
    conf = csv_mlp(tmp_path)
    job_id = submit_detached(conf, "--launcher", "slurm", "--module", "lion.py")
    job = ended(reg, job_id, timeout=120)
    assert job.state == jobdb.SUCCEEDED, job.reason
    assert job.external_id and job.external_id.isdigit()
    acc = final_test_accuracy(tmp_path / "workspace")
    assert acc >= 0.70, acc
    procs = reg.procs(job_id)
    assert [p.host for p in procs] == [clean_slurm.nodes[0].name] * 2
    assert [p.state for p in procs] == [jobdb.SUCCEEDED] * 2
    script = (tmp_path / "workspace" / f"singa-job-{job_id}" / "attempt-1" / "job.sbatch").read_text()
    assert "#SBATCH --nodes=1" in script and "#SBATCH --ntasks=2" in script
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --cpus-per-task=1" in script
    # each task's log, from the %t pattern srun filled in
    assert [Path(p.log_path).name for p in procs] == ["procs-0.log", "procs-1.log"]
    log = singa("log", str(job_id), "--proc", "0", cwd=tmp_path)
    assert log.returncode == 0 and "Test @ step 300" in log.stdout
    view = singa("view", str(job_id), cwd=tmp_path).stdout
    assert f"external id:  {job.external_id}" in view or job.external_id in view
