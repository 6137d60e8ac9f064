"""The queue across real hosts: two network namespaces with their own sshd
(netns.py), each with one slot (one core) in every hostfile, and LeNet jobs
of one core per process started over ssh by masters in the root namespace.

The story, in one registry (the session's):

1. job A spans both hosts (2 processes, one per host): it holds host 1's and
   host 2's only core;
2. job B needs host 2 only (1 process, a hostfile of host 2): QUEUED while A
   runs, "waiting for 1 core on <host 2>", in the registry, `singa list` and
   `singa view`; `singa hosts` shows both hosts full with A, and B waiting;
3. A is killed: its cores pass on at once, B is admitted and runs on host 2;
4. job D needs host 2 too: QUEUED behind B, the head of the queue; job C,
   submitted after D, needs host 1 only, which is free: admitted at once.
   Admission is per host, and the backfill rule does not hold C back, since
   the head D does not ask for host 1. `singa hosts` shows C on host 1, B on
   host 2 and D waiting for it;
5. everything is killed (`singa kill`, a queued job too), and no process of
   any job is left on either host, nor any master here.

And the master gives each remote process the BLAS threads of the cores its
job holds on that process's host (`demand`), read from the process's own
environment.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.jobs import jobdb
from tests.cluster.test_multihost import lenet_conf, nothing_left, singa, submitted_id
from tests.jobs.test_supervision import wait_for

STEPS = 10**6  # the jobs run until killed: the test decides when each one ends


@pytest.fixture
def cluster_args(ssh_cluster, tmp_path):
    """Hostfiles (both hosts, host 1 only, host 2 only; one slot each) as submit arguments."""
    h1, h2 = ssh_cluster.addresses
    files = {"both": ssh_cluster.hostfile(1)}
    for name, addr in (("h1", h1), ("h2", h2)):
        files[name] = tmp_path / f"hosts-{name}"
        files[name].write_text(f"{addr} slots=1\n")
    ssh = ["--ssh-config", str(ssh_cluster.ssh_config)]
    return {k: ["-H", str(p), *ssh] for k, p in files.items()}


@pytest.fixture
def cleanup(ssh_cluster, tmp_path) -> Iterator[list[int]]:
    """Kill whatever this test submitted and left active, even when it fails half-way."""
    ids: list[int] = []
    yield ids
    reg = jobdb.JobDB()
    for job_id in ids:
        if not reg.job(job_id).terminal:
            singa("kill", str(job_id), "--grace", "2", cwd=tmp_path)


def submit(tmp_path: Path, name: str, cluster: str, args: list[str], ids: list[int]) -> int:
    conf = lenet_conf(tmp_path, name, STEPS, cluster)
    r = singa("submit", "--detach", "--name", name, str(conf), *args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = submitted_id(r)
    ids.append(job_id)
    return job_id


def started(reg: jobdb.JobDB, job_id: int) -> jobdb.Job | None:
    job = reg.job(job_id)
    return job if job.state == jobdb.RUNNING else None


def hosts_table(tmp_path: Path) -> dict[str, dict]:
    r = singa("hosts", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return {h["host"]: h for h in json.loads(r.stdout)}


def hosts_text(tmp_path: Path) -> dict[str, str]:
    """HOST -> its whole line in `singa hosts`."""
    r = singa("hosts", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["HOST", "SLOTS", "USED"], r.stdout
    return {line.split()[0]: line for line in lines[1:] if line and not line.startswith(" ")}


def kill(tmp_path: Path, job_id: int) -> None:
    k = singa("kill", str(job_id), "--grace", "3", cwd=tmp_path)
    assert k.returncode == 0, k.stdout + k.stderr
    assert f"job {job_id} KILLED" in k.stdout, k.stdout


def test_admission_is_per_host(ssh_cluster, cluster_args, cleanup, tmp_path):
    h1, h2 = ssh_cluster.addresses
    reg = jobdb.JobDB()

    # 1. A on both hosts, one process (one core) on each
    a = submit(tmp_path, "a", "nworkers_per_group: 2", cluster_args["both"], cleanup)
    wait_for(lambda: started(reg, a), 60, "job A to run")
    assert reg.job(a).demand == {h: {"cores": 1, "mem": reg.job(a).demand[h]["mem"], "procs": 1,
                                     "threads": 1} for h in (h1, h2)}
    assert sorted(p.host for p in reg.procs(a)) == sorted([h1, h2])
    for p in reg.procs(a):  # each process runs the one BLAS thread its host's core allows
        assert blas_threads(p.pid) == ("1", "1"), p

    # 2. B on host 2 only: queued, waiting for host 2's core
    b = submit(tmp_path, "b", "", cluster_args["h2"], cleanup)
    job_b = reg.job(b)
    assert job_b.state == jobdb.QUEUED, job_b
    assert job_b.reason == f"waiting for 1 core on {h2}; next in line", job_b.reason
    assert list(job_b.demand) == [h2]
    lst = singa("list", cwd=tmp_path)
    assert re.search(rf"^{b}\s+b\s+QUEUED\s.*\s0\s+1 core on {re.escape(h2)}; next in line$",
                     lst.stdout, re.M), lst.stdout
    assert re.search(rf"^{a}\s+a\s+RUNNING\s", lst.stdout, re.M), lst.stdout
    view = singa("view", str(b), cwd=tmp_path)
    assert f"QUEUED: waiting for 1 core on {h2}; next in line" in view.stdout, view.stdout
    assert f"{h2}: 1 core" in view.stdout, view.stdout
    hosts = hosts_table(tmp_path)
    for h in (h1, h2):
        assert (hosts[h]["slots"], hosts[h]["used_slots"]) == (1, 1), hosts[h]
        assert [j["id"] for j in hosts[h]["jobs"]] == [a]
    assert [j["id"] for j in hosts[h2]["waiting"]] == [b] and hosts[h1]["waiting"] == []
    text = hosts_text(tmp_path)
    assert re.match(rf"{re.escape(h1)}\s+1\s+1\s+-\s+\d+ MiB\s+{a} \(a, 1 core\)$", text[h1]), text
    assert re.match(rf"{re.escape(h2)}\s+1\s+1\s+-\s+\d+ MiB\s+{a} \(a, 1 core\), "
                    rf"{b} \(queued: 1 core\)$", text[h2]), text
    assert "localhost" in text  # this host: the default cluster, not used by these jobs

    # 3. A ends: its cores pass on at once; B starts on host 2
    kill(tmp_path, a)
    assert reg.job(b).state in (jobdb.PENDING, jobdb.RUNNING), reg.job(b)
    nothing_left_of(ssh_cluster, reg.job(a))
    wait_for(lambda: started(reg, b), 60, "job B to run")
    assert [p.host for p in reg.procs(b)] == [h2]
    assert reg.job(b).admitted is not None and reg.job(b).reason == ""

    # 4. D waits for host 2 (the head of the queue); C, submitted after it,
    #    fits on host 1 and is admitted at once: D does not need host 1
    d = submit(tmp_path, "d", "", cluster_args["h2"], cleanup)
    assert reg.job(d).state == jobdb.QUEUED
    assert reg.job(d).reason == f"waiting for 1 core on {h2}; next in line", reg.job(d).reason
    c = submit(tmp_path, "c", "", cluster_args["h1"], cleanup)
    job_c = reg.job(c)
    assert job_c.state in (jobdb.PENDING, jobdb.RUNNING), job_c
    assert list(job_c.demand) == [h1]
    assert reg.job(d).state == jobdb.QUEUED  # still: host 2 is B's
    wait_for(lambda: started(reg, c), 60, "job C to run")
    assert [p.host for p in reg.procs(c)] == [h1]
    lst = singa("list", cwd=tmp_path)
    assert re.search(rf"^{c}\s+c\s+RUNNING\s", lst.stdout, re.M), lst.stdout
    assert re.search(rf"^{d}\s+d\s+QUEUED\s.*1 core on {re.escape(h2)}; next in line$",
                     lst.stdout, re.M), lst.stdout
    hosts = hosts_table(tmp_path)
    assert (hosts[h1]["used_slots"], [j["id"] for j in hosts[h1]["jobs"]]) == (1, [c])
    assert (hosts[h2]["used_slots"], [j["id"] for j in hosts[h2]["jobs"]]) == (1, [b])
    assert [j["id"] for j in hosts[h2]["waiting"]] == [d]
    text = hosts_text(tmp_path)
    assert re.match(rf"{re.escape(h1)}\s+1\s+1\s+-\s+\d+ MiB\s+{c} \(c, 1 core\)$", text[h1]), text
    assert re.match(rf"{re.escape(h2)}\s+1\s+1\s+-\s+\d+ MiB\s+{b} \(b, 1 core\), "
                    rf"{d} \(queued: 1 core\)$", text[h2]), text

    # 5. the queued D is withdrawn, B and C killed: nothing left anywhere
    kill(tmp_path, d)
    job_d = reg.job(d)
    assert job_d.state == jobdb.KILLED and "while queued; it never started" in job_d.reason
    assert reg.procs(d) == []
    for job_id in (b, c):
        kill(tmp_path, job_id)
    for job_id in (a, b, c, d):
        nothing_left(ssh_cluster, reg.job(job_id))
    hosts = hosts_table(tmp_path)
    assert all(hosts[h]["used_slots"] == 0 and hosts[h]["jobs"] == [] for h in hosts
               if h in (h1, h2)), hosts


def blas_threads(pid: int) -> tuple[str | None, str | None]:
    """(OPENBLAS_NUM_THREADS, SINGA_CORES) in the environment of process `pid`.
    A process started over ssh on a namespace host is in this pid space too."""
    env = dict(item.split("=", 1) for item in
               Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    return env.get("OPENBLAS_NUM_THREADS"), env.get("SINGA_CORES")


def test_each_host_gets_the_blas_threads_of_the_cores_the_job_holds_there(
        ssh_cluster, cleanup, tmp_path):
    """3 processes with --cores 2, placed slot by slot: host 1 (1 slot: 1
    process, 1 thread, never more than the host has) and host 2 (4 slots: 2
    processes, 2 threads each): the master gives each remote process the
    threads of the cores the job holds on its own host."""
    h1, h2 = ssh_cluster.addresses
    hf = tmp_path / "hosts-1-4"
    hf.write_text(f"{h1} slots=1\n{h2} slots=4\n")
    args = ["-H", str(hf), "--ssh-config", str(ssh_cluster.ssh_config), "--cores", "2"]
    job_id = submit(tmp_path, "threads", "nworkers_per_group: 3", args, cleanup)
    reg = jobdb.JobDB()
    wait_for(lambda: started(reg, job_id), 60, "the job to run")
    demand = reg.job(job_id).demand
    assert {h: (d["cores"], d["procs"], d["threads"]) for h, d in demand.items()} == \
        {h1: (1, 1, 1), h2: (4, 2, 2)}
    got = sorted((p.host, blas_threads(p.pid)) for p in reg.procs(job_id))
    assert got == sorted([(h1, ("1", "1")), (h2, ("2", "2")), (h2, ("2", "2"))]), got
    text = hosts_text(tmp_path)
    assert re.match(rf"{re.escape(h1)}\s+1\s+1\s.*{job_id} \(threads, 1 core\)$", text[h1]), text
    assert re.match(rf"{re.escape(h2)}\s+4\s+4\s.*{job_id} \(threads, 4 cores\)$", text[h2]), text
    kill(tmp_path, job_id)
    nothing_left(ssh_cluster, reg.job(job_id))


def nothing_left_of(cluster, job: jobdb.Job) -> None:
    """The job's processes are gone from their hosts (others may be running)."""
    from runtime.jobs import pgroup

    for p in jobdb.JobDB().procs(job.id):
        wait_for(lambda p=p: not pgroup.members(p.pgid, p.start_time) or None, 10,
                 f"process {p.procs_id} of job {job.id} to stop")
    assert not pgroup.alive(job.master_pid, job.master_start)
