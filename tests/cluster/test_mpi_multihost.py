"""`--launcher mpi` across real hosts: network namespaces with their own sshd
(netns.py), reached by mpirun's own ssh launch with singa's ssh options. The
job master runs here; the ranks run in the namespaces, under the orted that
mpirun started there over ssh, and talk tcp with CurveZMQ.

Checked: the CSV MLP succeeds with a rank on each host (`singa view` names
them), `singa kill` and the SIGKILL of a remote rank leave nothing on any
host, and an ssh launch that fails says why in ssh's words.
"""
from __future__ import annotations

import re
import shutil

import pytest

from runtime.jobs import jobdb, pgroup
from tests.engines.test_mpi import csv_mlp, final_test_accuracy, job_processes, mpirun_command
from tests.jobs.test_supervision import wait_for

from .test_multihost import singa, submitted_id

pytestmark = pytest.mark.skipif(
    shutil.which("mpirun") is None,
    reason="Open MPI's mpirun is not installed (Debian package openmpi-bin; bin/setup installs "
           "it when run as root)")


@pytest.fixture
def mpi_args(ssh_cluster):
    return ["--launcher", "mpi", "--module", "lion.py", "-H", str(ssh_cluster.hostfile(1)),
            "--ssh-config", str(ssh_cluster.ssh_config)]


def nothing_left(cluster, job_id: int) -> None:
    """No process on any host (orted included), no mpirun or rank here, no master."""
    for i in range(len(cluster.addresses)):
        assert cluster.wait_idle(i, timeout=10) == [], f"processes left on host {i}"
    job = jobdb.JobDB().job(job_id)
    wait_for(lambda: not job_processes(job_id) and not pgroup.alive(job.master_pid, job.master_start),
             10, "mpirun and the job master to exit")


def ranks_on_hosts(cluster, procs: list[jobdb.Proc]) -> None:
    """Rank p runs in host p's namespace: its pid is there, and the address
    it advertised in its kConnect is that host's."""
    for p in procs:
        assert p.pid in cluster.pids(p.procs_id), (p.procs_id, p.pid)
        assert p.host == cluster.addresses[p.procs_id]
        assert p.endpoint.startswith(f"tcp://{cluster.addresses[p.procs_id]}:"), p.endpoint


def test_the_csv_mlp_across_two_hosts(ssh_cluster, mpi_args, tmp_path):
    conf = csv_mlp(tmp_path, "mlp")
    r = singa("submit", str(conf), *mpi_args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = submitted_id(r)
    reg = jobdb.JobDB()
    job = reg.job(job_id)
    assert job.state == jobdb.SUCCEEDED, job.reason
    assert final_test_accuracy(str(job.workspace)) >= 0.70
    procs = reg.procs(job_id)
    for p in procs:  # each rank said where it ran: its address on its host's network
        assert p.host == ssh_cluster.addresses[p.procs_id]
        assert p.endpoint.startswith(f"tcp://{ssh_cluster.addresses[p.procs_id]}:"), p.endpoint
    v = singa("view", str(job_id), cwd=tmp_path)
    for i, addr in enumerate(ssh_cluster.addresses):
        assert re.search(rf"^{i}\s+{re.escape(addr)}\s+\d+\s+worker 0/{i}.*SUCCEEDED", v.stdout,
                         re.M), v.stdout
    cmd = mpirun_command(job)
    assert "plm_rsh_agent" in cmd and str(ssh_cluster.ssh_config) in cmd
    assert re.search(r"oob_tcp_if_include \d+\.\d+\.\d+\.0/24", cmd), cmd
    # the job's CURVE secret is in no log
    secret = job.secret["curve"]["secret"]
    for log in (tmp_path / "mlp.ws").rglob("*.log"):
        assert secret not in log.read_text(errors="replace"), log
    nothing_left(ssh_cluster, job_id)


def test_kill_leaves_nothing_on_any_host(ssh_cluster, mpi_args, tmp_path):
    conf = csv_mlp(tmp_path, "long", steps=10**6)
    r = singa("submit", "--detach", str(conf), *mpi_args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job_id = submitted_id(r)
    reg = jobdb.JobDB()
    wait_for(lambda: reg.job(job_id).state == jobdb.RUNNING and (reg.job(job_id).step or 0) >= 5,
             60, "training steps")
    ranks_on_hosts(ssh_cluster, reg.procs(job_id))
    k = singa("kill", str(job_id), "--grace", "3", cwd=tmp_path)
    assert k.returncode == 0, k.stderr
    assert f"job {job_id} KILLED" in k.stdout
    assert reg.job(job_id).state == jobdb.KILLED
    nothing_left(ssh_cluster, job_id)
    assert {p.state for p in reg.procs(job_id)} == {jobdb.KILLED}


def test_sigkill_of_a_remote_rank_fails_the_job_naming_rank_and_host(ssh_cluster, mpi_args,
                                                                     tmp_path):
    conf = csv_mlp(tmp_path, "victim", steps=10**6)
    r = singa("submit", "--detach", str(conf), *mpi_args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job_id = submitted_id(r)
    reg = jobdb.JobDB()
    wait_for(lambda: reg.job(job_id).state == jobdb.RUNNING and (reg.job(job_id).step or 0) >= 5,
             60, "training steps")
    victim = next(p for p in reg.procs(job_id) if p.procs_id == 1)
    k = ssh_cluster.ssh(1, ["kill", "-KILL", str(victim.pid)])
    assert k.returncode == 0, k.stderr
    job = wait_for(lambda: (lambda j: j if j.terminal else None)(reg.job(job_id)), 10, "FAILED")
    assert job.state == jobdb.FAILED, job
    assert job.reason.startswith(f"rank 1 on {ssh_cluster.addresses[1]}, pid {victim.pid} "
                                 "(worker 0/1) was killed by SIGKILL"), job.reason
    nothing_left(ssh_cluster, job_id)
    assert {p.procs_id: p.state for p in reg.procs(job_id)} == {0: jobdb.KILLED, 1: jobdb.FAILED}


def test_an_ssh_launch_that_fails_says_why(ssh_cluster, mpi_args, tmp_path):
    conf = csv_mlp(tmp_path, "refused")
    r = singa("submit", str(conf), *mpi_args, "--ssh-port", "1", cwd=tmp_path)
    assert r.returncode == 1
    job = jobdb.JobDB().job(submitted_id(r))
    assert job.state == jobdb.FAILED
    assert re.search(r"^rank 0 on \S+ \(worker 0/0, server 0/0\) ended with mpirun, which exited "
                     r"with code \d+: connection refused by \S+ .*on port 1: is sshd running",
                     job.reason), job.reason
    nothing_left(ssh_cluster, job.id)
