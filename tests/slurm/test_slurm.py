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


def squeue(slurm, slurm_id: str) -> str:
    return slurm.run("squeue", "-h", "-j", slurm_id, "-o", "%T").stdout.strip()


def running(reg, job_id: int, steps: int = 5) -> jobdb.Job:
    wait_for(lambda: reg.job(job_id).state == jobdb.RUNNING and (reg.job(job_id).step or 0) >= steps,
             90, f"job {job_id} to train")
    return reg.job(job_id)


def test_slurm_opt_reaches_sbatch_and_kill_cancels_the_job(clean_slurm, tmp_path, reg):
    conf = csv_mlp(tmp_path, steps=10**6)
    job_id = submit_detached(conf, "--launcher", "slurm", "--module", "lion.py",
                             "--slurm-opt", "--time=7 --comment='singa test'")
    job = running(reg, job_id)
    assert job.options["slurm"]["opts"] == ["--time=7", "--comment=singa test"]
    show = clean_slurm.run("scontrol", "show", "job", job.external_id).stdout
    assert "TimeLimit=00:07:00" in show and "Comment=singa test" in show
    r = singa("kill", str(job_id), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert reg.job(job_id).state == jobdb.KILLED
    wait_for(lambda: squeue(clean_slurm, job.external_id) == "", 15,
             f"Slurm job {job.external_id} to leave squeue")


def test_a_bad_slurm_opt_is_sbatchs_error_before_anything_runs(clean_slurm, tmp_path, reg):
    conf = csv_mlp(tmp_path, steps=10)
    before = len(reg.jobs())
    for opt, said in (("--bogus-option", "unrecognized option"),
                      ("--partition=nosuch", "invalid partition")):
        r = singa("submit", str(conf), "--launcher", "slurm", "--module", "lion.py",
                  "--slurm-opt", opt, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert "sbatch refuses the job" in r.stderr and said in r.stderr.lower(), r.stderr
    assert len(reg.jobs()) == before and clean_slurm.jobs() == []


def test_sigkill_of_a_task_fails_the_job_naming_node_and_task(clean_slurm, tmp_path, reg):
    conf = csv_mlp(tmp_path, steps=10**6)
    job_id = submit_detached(conf, "--launcher", "slurm", "--module", "lion.py")
    running(reg, job_id)
    victim = next(p for p in reg.procs(job_id) if p.procs_id == 1)
    os.kill(victim.pid, signal.SIGKILL)
    job = ended(reg, job_id, timeout=30)
    node = clean_slurm.nodes[0].name
    assert job.state == jobdb.FAILED
    assert re.match(rf"task 1 on {node}, pid {victim.pid} \(worker 0/1\) was killed by SIGKILL",
                    job.reason), job.reason
    wait_for(lambda: squeue(clean_slurm, job.external_id) == "", 15, "the Slurm job to end")


def test_a_job_slurm_cannot_place_is_queued_with_slurms_reason(clean_slurm, tmp_path, reg):
    node = clean_slurm.nodes[0].name
    r = clean_slurm.run("scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=test")
    assert r.returncode == 0, r.stderr
    conf = csv_mlp(tmp_path, steps=10)
    job_id = submit_detached(conf, "--launcher", "slurm", "--module", "lion.py")
    # Slurm's words for it change with its scheduling passes
    why = r"Slurm: (Nodes required for job are DOWN|ReqNodeNotAvail, UnavailableNodes:)"
    job = wait_for(lambda: (lambda j: j if j.state == jobdb.QUEUED and re.match(why, j.reason)
                            else None)(reg.job(job_id)), 30, "the job to show QUEUED with why")
    assert job.external_id and squeue(clean_slurm, job.external_id) == "PENDING"
    view = singa("view", str(job_id), cwd=tmp_path).stdout
    assert re.search("state: +QUEUED: " + why, view), view
    listing = singa("list", cwd=tmp_path).stdout
    assert re.search(rf"^{job_id}\s.*QUEUED.*slurm:{job.external_id}\s.*{why}", listing, re.M), listing
    # well past the master's connect timeout would be too long to wait for;
    # the job is still QUEUED (the registry's queue leaves it alone) until killed
    assert singa("kill", str(job_id), cwd=tmp_path).returncode == 0
    assert reg.job(job_id).state == jobdb.KILLED
    wait_for(lambda: squeue(clean_slurm, job.external_id) == "", 15, "the Slurm job to leave squeue")


def test_inside_an_allocation_the_processes_are_a_step_of_it(clean_slurm, tmp_path, reg):
    conf = csv_mlp(tmp_path, steps=100)
    r = subprocess.run(["salloc", "-N1", "-n2", sys.executable, "-m", "singa_cli.main", "submit",
                        str(conf), "--launcher", "slurm", "--module", "lion.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    alloc = re.search(r"Granted job allocation (\d+)", r.stderr).group(1)
    job = reg.jobs()[-1]
    assert job.state == jobdb.SUCCEEDED, job.reason
    assert job.options["slurm"]["allocation"] == alloc
    assert re.fullmatch(rf"{alloc}\.\d+", job.external_id or ""), job.external_id
    # no batch job of its own: the allocation is the only Slurm job there was
    assert not list((tmp_path / "workspace").glob("singa-job-*/attempt-1/job.sbatch"))


@pytest.mark.parametrize("framework", ["sandblaster", "downpour"])
def test_framework_examples_run_under_slurm(clean_slurm, tmp_path, reg, framework):
    src = ROOT / "examples" / "frameworks" / f"{framework}.conf"
    if not (ROOT / "examples" / "mnist" / "train_data.bin").exists():
        pytest.skip("Fashion-MNIST is not imported (bin/setup does)")
    text = src.read_text()
    text = re.sub(r"train_steps: \d+", "train_steps: 6", text)
    text = re.sub(r"test_steps: \d+", "test_steps: 2", text)
    text = re.sub(r"test_freq: \d+", "test_freq: 6", text)
    text = text.replace("../mnist/", str(ROOT / "examples" / "mnist") + "/")
    text = re.sub(r'workspace: "[^"]*"', f'workspace: "{tmp_path}/ws"', text)
    conf = tmp_path / f"{framework}.conf"
    conf.write_text(text)
    job_id = submit_detached(conf, "--launcher", "slurm")
    job = ended(reg, job_id, timeout=180)
    assert job.state == jobdb.SUCCEEDED, job.reason
    assert len(reg.procs(job_id)) == job.nprocs


def test_slurm_words():
    """What singa makes of Slurm's texts (pure functions; no Slurm needed)."""
    from runtime.jobs import slurm

    assert [slurm.duration(t) for t in ("10:00", "1:30:00", "2-00:00:00", "0:45", "UNLIMITED")] \
        == ["10 min", "1 h 30 min", "2 d", "45 s", "UNLIMITED"]
    out = ("task 0 on vm\nsrun: error: node2: task 1: Killed\n"
           "srun: error: node1: tasks 0,2-3: Terminated\n")
    assert slurm.task_failures(out) == [("node2", [1], "Killed"), ("node1", [0, 2, 3], "Terminated")]
    assert slurm.task_status("Killed") == -signal.SIGKILL
    assert slurm.task_status("Exited with exit code 3") == 3
    assert slurm.split_opts("--partition=debug --comment='a b'") == ["--partition=debug",
                                                                     "--comment=a b"]
    assert slurm._opt_value(["-N", "2"], "--nodes", "-N") == "2"
    assert slurm._opt_value(["--nodes=3", "-p", "x"], "--nodes", "-N") == "3"
    assert slurm.layout(5, 1, ["--nodes=2"]) == ["--ntasks=5", "--cpus-per-task=1",
                                                 "--ntasks-per-node=3"]


def test_a_job_bigger_than_any_node_is_queued_with_slurms_reason(clean_slurm, tmp_path, reg):
    conf = csv_mlp(tmp_path, steps=10)
    # more cores a task than any node has: sbatch takes it, Slurm keeps it pending
    job_id = submit_detached(conf, "--launcher", "slurm", "--module", "lion.py", "--cores", "64")
    job = wait_for(lambda: (lambda j: j if j.state == jobdb.QUEUED and j.reason != "Slurm: pending"
                            else None)(reg.job(job_id)), 30, "the job to show QUEUED with why")
    assert re.match(r"Slurm: \w+", job.reason), job.reason
    assert singa("kill", str(job_id), cwd=tmp_path).returncode == 0
    wait_for(lambda: squeue(clean_slurm, job.external_id) == "", 15, "the Slurm job to leave squeue")


def test_the_time_limit_fails_the_job_with_slurms_words(clean_slurm, tmp_path, reg):
    """A real Slurm time limit: `--time=0:05` (5 s; slurmctld checks limits
    every 30 s or so, so this takes up to a minute)."""
    conf = csv_mlp(tmp_path, steps=10**6)
    job_id = submit_detached(conf, "--launcher", "slurm", "--module", "lion.py",
                             "--slurm-opt", "--time=0:05")
    job = ended(reg, job_id, timeout=150)
    assert job.state == jobdb.FAILED
    assert re.search(r"Slurm time limit \(.+\) reached", job.reason), job.reason
    wait_for(lambda: squeue(clean_slurm, job.external_id) == "", 15, "the Slurm job to end")
