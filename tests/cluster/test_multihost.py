"""A LeNet job across real hosts: network namespaces joined by a bridge, each
with its own sshd (netns.py). The job master runs here, in the root
namespace; its processes are started over ssh from a hostfile of the
namespaces' addresses and talk tcp with CurveZMQ.

Checked: processes on every host in `view`, a remote log through `singa log`,
a remote worker killed with SIGKILL fails the job within 5 s with nothing left
anywhere, and `singa kill` leaves no process on any host.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.jobs import jobdb, pgroup
from tests.jobs.test_supervision import wait_for

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "mnist"


def lenet_conf(tmp: Path, name: str, steps: int, cluster: str) -> Path:
    if not (DATA / "train_data.bin").exists():
        pytest.skip("Fashion-MNIST is not imported: run bin/setup (singa data fetch)")
    text = (DATA / "conv.conf").read_text()
    text = re.sub(r"^train_steps: \d+", f"train_steps: {steps}", text, flags=re.M)
    text = re.sub(r"^test_steps: \d+", "test_steps: 5", text, flags=re.M)
    text = re.sub(r"^test_freq: \d+", f"test_freq: {steps}", text, flags=re.M)
    text = re.sub(r"^disp_freq: \d+", "disp_freq: 10", text, flags=re.M)
    text = re.sub(r"^num_openblas_threads: \d+", "num_openblas_threads: 1", text, flags=re.M)
    text = text.replace('path: "train_data.bin"', f'path: "{DATA}/train_data.bin"')
    text = text.replace('path: "test_data.bin"', f'path: "{DATA}/test_data.bin"')
    cluster_block = "cluster {\n  " + cluster + f'\n  workspace: "{tmp}/{name}.ws"\n}}\n'
    text = re.sub(r"cluster \{.*\}\s*$", cluster_block, text, flags=re.S)
    p = tmp / f"{name}.conf"
    p.write_text(text)
    return p


def singa(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def submitted_id(r: subprocess.CompletedProcess) -> int:
    m = re.search(r"Submitted job (\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    return int(m.group(1))


def nothing_left(cluster, job: jobdb.Job) -> None:
    """No process of the job on any host, nor its master here."""
    for i in range(len(cluster.addresses)):
        assert cluster.wait_idle(i, timeout=10) == [], f"processes left on host {i}"
    assert not pgroup.alive(job.master_pid, job.master_start)


@pytest.fixture
def hosts_args(ssh_cluster):
    return ["-H", str(ssh_cluster.hostfile(1)), "--ssh-config", str(ssh_cluster.ssh_config)]


def test_lenet_across_two_hosts(ssh_cluster, hosts_args, tmp_path):
    conf = lenet_conf(tmp_path, "sync", 40, "nworkers_per_group: 2")
    r = singa("submit", str(conf), *hosts_args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job_id = submitted_id(r)
    # process 0's log streams from its host to the submitting terminal
    assert "Test @ step 40  Loss = " in r.stdout
    assert f"job {job_id} SUCCEEDED" in r.stderr

    v = singa("view", str(job_id), cwd=tmp_path)
    assert v.returncode == 0, v.stderr
    for addr in ssh_cluster.addresses:
        row = rf"^\d+\s+{re.escape(addr)}\s+\d+\s+worker 0/\d.*SUCCEEDED"
        assert re.search(row, v.stdout, re.M), v.stdout
    job = jobdb.JobDB().job(job_id)
    assert job.launcher == "ssh" and sorted(set(job.hosts)) == sorted(ssh_cluster.addresses)
    # the keys of the job never show up on a command line or in its logs
    secret = job.secret["curve"]["secret"]
    for log in Path(job.log_dir).rglob("*.log"):
        assert secret not in log.read_text(errors="replace"), log

    # a remote log, read over ssh
    lg = singa("log", str(job_id), "--proc", "1", cwd=tmp_path)
    assert lg.returncode == 0, lg.stderr
    proc1 = next(p for p in jobdb.JobDB().procs(job_id) if p.procs_id == 1)
    assert proc1.host == ssh_cluster.addresses[1]
    nothing_left(ssh_cluster, job)


def test_sigkill_of_a_remote_worker_fails_the_job_within_5s(ssh_cluster, hosts_args, tmp_path):
    conf = lenet_conf(tmp_path, "victim", 10**6, "nworkers_per_group: 2")
    r = singa("submit", "--detach", str(conf), *hosts_args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job_id = submitted_id(r)
    reg = jobdb.JobDB()
    wait_for(lambda: (reg.job(job_id).step or 0) >= 10, 60, "training steps")
    victim = next(p for p in reg.procs(job_id) if p.procs_id == 1)
    assert victim.host == ssh_cluster.addresses[1]
    k = ssh_cluster.ssh(1, ["kill", "-KILL", str(victim.pid)])
    assert k.returncode == 0, k.stderr
    t0 = time.monotonic()
    job = wait_for(lambda: (lambda j: j if j.terminal else None)(reg.job(job_id)), 10, "FAILED")
    took = time.monotonic() - t0
    assert job.state == jobdb.FAILED, job
    assert took <= 5.0, f"FAILED after {took:.1f} s"
    assert f"process 1 on {victim.host}, pid {victim.pid}" in job.reason, job.reason
    assert "was killed by SIGKILL" in job.reason, job.reason
    wait_for(lambda: not pgroup.alive(job.master_pid, job.master_start), 20, "the master to exit")
    nothing_left(ssh_cluster, job)
    v = singa("view", str(job_id), cwd=tmp_path)
    assert "FAILED" in v.stdout and job.reason.split(":")[0] in v.stdout


def test_kill_leaves_no_process_on_any_host(ssh_cluster, hosts_args, tmp_path):
    conf = lenet_conf(tmp_path, "long", 10**6, "nworkers_per_group: 2")
    r = singa("submit", "--detach", str(conf), *hosts_args, cwd=tmp_path)
    job_id = submitted_id(r)
    reg = jobdb.JobDB()
    wait_for(lambda: reg.job(job_id).state == jobdb.RUNNING, 60, "RUNNING")
    # the job's CURVE secret is on no command line of any process (all hosts
    # share this process table: namespaces separate only the network)
    import psutil

    secret = reg.job(job_id).secret["curve"]["secret"]
    assert not [p.pid for p in psutil.process_iter(["cmdline"])
                if secret in " ".join(p.info["cmdline"] or [])]
    k = singa("kill", str(job_id), "--grace", "3", cwd=tmp_path)
    assert k.returncode == 0, k.stderr
    assert f"job {job_id} KILLED" in k.stdout
    job = reg.job(job_id)
    assert job.state == jobdb.KILLED
    nothing_left(ssh_cluster, job)
    assert all(p.state == jobdb.KILLED for p in reg.procs(job_id))


def test_an_unreachable_host_fails_the_job_with_the_reason(ssh_cluster, tmp_path):
    bad = ssh_cluster.addresses[0].rsplit(".", 1)[0] + ".250"  # on the bridge's net, no host
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{ssh_cluster.addresses[0]}\n{bad}  # gone\n")
    conf = lenet_conf(tmp_path, "stranded", 10**6, "nworkers_per_group: 2")
    r = singa("submit", str(conf), "-H", str(hosts), "--ssh-config", str(ssh_cluster.ssh_config),
              cwd=tmp_path)
    assert r.returncode == 1
    job = jobdb.JobDB().job(submitted_id(r))
    assert job.state == jobdb.FAILED
    assert f"process 1 on {bad} (worker 0/1)" in job.reason, job.reason
    assert "no route to host" in job.reason.lower() or "timed out" in job.reason.lower(), job.reason
    nothing_left(ssh_cluster, job)


def test_hosts_check_probes_each_host_over_ssh(ssh_cluster, tmp_path):
    conf = lenet_conf(tmp_path, "plan", 10, "nworkers_per_group: 2")
    r = singa("hosts", "check", str(ssh_cluster.hostfile(1)), "--ssh-config",
              str(ssh_cluster.ssh_config), "--conf", str(conf), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for addr in ssh_cluster.addresses:
        assert re.search(rf"^{re.escape(addr)}\s+1\s+{re.escape(addr)}\s+ok", r.stdout, re.M), r.stdout
    r = singa("hosts", "check", str(ssh_cluster.hostfile(1)), "--ssh-config",
              str(ssh_cluster.ssh_config), "--ssh-port", "2", cwd=tmp_path)
    assert r.returncode == 1 and "refused" in r.stdout.lower(), r.stdout + r.stderr


def test_a_user_layer_runs_across_hosts(ssh_cluster, hosts_args, tmp_path):
    from tests.jobs.test_code_shipping import user_layer_conf
    from tests.test_training import USER_LAYER

    (tmp_path / "mylayers.py").write_text(USER_LAYER)
    conf = user_layer_conf(tmp_path, "userhosts", "nworkers_per_group: 2")
    r = singa("submit", str(conf), "--exec", str(tmp_path / "mylayers.py"), *hosts_args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job = jobdb.JobDB().job(submitted_id(r))
    assert job.state == jobdb.SUCCEEDED and sorted(set(job.hosts)) == sorted(ssh_cluster.addresses)


def test_a_feature_partitioned_group_across_hosts(ssh_cluster, hosts_args, tmp_path):
    """The MLP's inner-product layers split by feature over two workers on two
    hosts: the bridge layers carry activations and gradients over tcp (with
    the job's CurveZMQ keys), and the params after 10 steps are those of one
    worker with the whole batch."""
    from runtime.config import load_job
    from runtime.train import single
    from tests.test_partition import STEPS, saved, write

    one = write(tmp_path, "one.conf", "", "mlp")
    worker = single.train(load_job(str(one), submit=True).proto, log=lambda line: None)
    ref = {p.name: p.data.copy() for p in worker.owned_params()}
    conf = write(tmp_path, "hosts.conf", "nworkers_per_group: 2 nworkers_per_procs: 1", "mlp",
                 feature=True)
    r = singa("submit", str(conf), *hosts_args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"Test @ step {STEPS}  Loss = " in r.stdout
    job = jobdb.JobDB().job(submitted_id(r))
    assert job.state == jobdb.SUCCEEDED and sorted(set(job.hosts)) == sorted(ssh_cluster.addresses)
    got = saved(conf)
    assert set(got) == set(ref)
    for name, values in ref.items():
        assert float(abs(got[name] - values).max()) <= 1e-5, name


def test_a_host_cut_off_fails_the_job_and_the_master_stops_at_once(make_ssh_cluster, tmp_path):
    """Host 1 cut off mid-training: the job FAILED naming process 1; the master
    stops the hosts in parallel with a short connect timeout, so it exits within
    seconds (not after sequential ssh timeouts), with each process's row saying
    how it ended: process 0 KILLED with its exit, process 1 LOST with its host."""
    cluster = make_ssh_cluster(2)
    conf = lenet_conf(tmp_path, "cut", 10**6, "nworkers_per_group: 2")
    r = singa("submit", "--detach", str(conf), "-H", str(cluster.hostfile(1)),
              "--ssh-config", str(cluster.ssh_config), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job_id = submitted_id(r)
    reg = jobdb.JobDB()
    wait_for(lambda: (reg.job(job_id).step or 0) >= 5, 60, "training steps")
    subprocess.run(["ip", "link", "set", cluster.veth_names[1], "down"], check=True)
    try:
        job = wait_for(lambda: (lambda j: j if j.terminal else None)(reg.job(job_id)), 15,
                       "the job to end")
        assert job.state == jobdb.FAILED, job
        assert f"process 1 on {cluster.addresses[1]}" in job.reason, job.reason
        wait_for(lambda: not pgroup.alive(job.master_pid, job.master_start), 12,
                 "the master to exit")
        rows = {p.procs_id: p for p in reg.procs(job_id)}
        assert rows[1].state == jobdb.LOST, rows[1]
        assert rows[0].state == jobdb.KILLED and (rows[0].exit_code, rows[0].signal) != (None, None), \
            rows[0]
        v = singa("view", str(job_id), cwd=tmp_path)
        assert re.search(rf"^1\s+{re.escape(cluster.addresses[1])}\s+\d+\s+.*\sLOST\s", v.stdout,
                         re.M), v.stdout
    finally:
        subprocess.run(["ip", "link", "set", cluster.veth_names[1], "up"], check=True)
    # without its master, process 1 stops by itself on its host
    assert cluster.wait_idle(0, timeout=10) == []
    p1 = reg.procs(job_id)[1]
    wait_for(lambda: not pgroup.members(p1.pgid, p1.start_time), 15, "process 1 to stop")
