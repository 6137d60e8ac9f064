"""`singa hosts` (no command): each host's slots, memory and allocation, read
from a real registry in a temporary SINGA_HOME whose jobs are written through
the registry API (no job runs, no root needed)."""
from __future__ import annotations

import json
import re

import pytest

from runtime.jobs import jobdb
from singa_cli.hosts import render
from tests.cli.test_jobs_cli import live_master, singa

MiB = 2**20
GiB = 2**30


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "singa-home"
    home.mkdir()
    # the default cluster: this host (1 GiB, less than it has) and one other
    (home / "hosts").write_text("localhost slots=2 mem=1G\nnode2.example.org slots=4 mem=16G\n")
    return home


def ask(cores, mem=0, procs=1):
    return {"cores": cores, "mem": mem, "procs": procs, "threads": max(1, cores // procs)}


def add(reg, name, demand, capacity, state=None):
    """A job as submit records it: its demand and the capacity it saw; the
    registry's queue pass decides QUEUED or PENDING."""
    hosts = [h for h, d in demand.items() for _ in range(d["procs"])]
    job = reg.create_job(name=name, conf_path=f"/exp/{name}.conf", conf_text=f"name: '{name}'",
                         workspace=f"/exp/{name}/ws", launcher="ssh", hosts=hosts,
                         nprocs=len(hosts), train_steps=100, demand=demand,
                         options={"capacity": capacity})
    live_master(reg, job)
    if state is not None:
        reg.transition(job.id, state)
    return reg.job(job.id)


@pytest.fixture
def jobs(home):
    local = {"localhost": {"cores": 2, "mem": GiB}}
    with jobdb.JobDB(home) as reg:
        conv = add(reg, "conv", {"localhost": ask(1, 91 * MiB)}, local, jobdb.RUNNING)
        big = add(reg, "big", {"localhost": ask(2, 300 * MiB)}, local)
        far = add(reg, "far", {"node9.example.org": ask(3, 0, 3)},
                  {"node9.example.org": {"cores": 4, "mem": None},
                   "node8.example.org": {"cores": 2, "mem": None}})
        done = add(reg, "done", {"node2.example.org": ask(4, GiB, 4)},
                   {"node2.example.org": {"cores": 4, "mem": 16 * GiB}}, jobdb.RUNNING)
        reg.transition(done.id, jobdb.SUCCEEDED)
    assert (conv.state, big.state, far.state) == (jobdb.RUNNING, jobdb.QUEUED, jobdb.PENDING)
    return {"conv": conv.id, "big": big.id, "far": far.id, "done": done.id}


def rows_of(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["HOST", "SLOTS", "USED", "MEMORY", "USED MEM", "JOBS"]
    starts = [lines[0].index(c) for c in ("SLOTS", "USED ", "MEMORY", "USED MEM", "JOBS")]
    rows = {}
    for line in lines[1:]:
        if not line or line[0] == " " or "queued;" in line:
            break
        cuts = [0, *starts, len(line)]
        rows[line[:starts[0]].strip()] = [line[a:b].strip() for a, b in zip(cuts[1:], cuts[2:])]
    return rows


def test_hosts_shows_slots_memory_and_the_jobs_on_each_host(home, jobs):
    r = singa(home, "hosts")
    assert r.returncode == 0, r.stderr
    rows = rows_of(r.stdout)
    # the default cluster in its order, then the hosts of the active jobs
    assert list(rows) == ["localhost", "node2.example.org", "node9.example.org",
                          "node8.example.org"]
    assert rows["localhost"] == ["2", "1", "1024 MiB", "91 MiB",
                                 f"{jobs['conv']} (conv, 1 core), {jobs['big']} (queued: 2 cores)"]
    # the ended job holds nothing
    assert rows["node2.example.org"] == ["4", "0", "16.0 GiB", "0 MiB", "-"]
    # a host of a job outside the default cluster, with the capacity that job saw
    assert rows["node9.example.org"] == ["4", "3", "-", "0 MiB", f"{jobs['far']} (far, 3 cores)"]
    assert rows["node8.example.org"] == ["2", "0", "-", "0 MiB", "-"]
    assert "1 job queued; 'singa list --state QUEUED' says what each waits for" in r.stdout


def test_hosts_json(home, jobs):
    r = singa(home, "hosts", "--json")
    assert r.returncode == 0, r.stderr
    got = {h["host"]: h for h in json.loads(r.stdout)}
    local = got["localhost"]
    assert (local["slots"], local["mem"], local["used_slots"], local["used_mem"]) == \
        (2, GiB, 1, 91 * MiB)
    assert [(j["id"], j["name"], j["state"], j["cores"]) for j in local["jobs"]] == \
        [(jobs["conv"], "conv", "RUNNING", 1)]
    assert [(j["id"], j["state"], j["cores"], j["mem"]) for j in local["waiting"]] == \
        [(jobs["big"], "QUEUED", 2, 300 * MiB)]
    assert got["node9.example.org"]["used_slots"] == 3
    assert got["node2.example.org"]["jobs"] == [] and got["node2.example.org"]["mem"] == 16 * GiB


def test_a_job_whose_master_died_holds_nothing_and_the_next_one_is_admitted(home, jobs):
    with jobdb.JobDB(home) as reg:
        reg.set_master(jobs["conv"], 2**22 + 1, None)  # no such process: its master is gone
    rows = rows_of(singa(home, "hosts").stdout)
    # conv is found LOST, its core passes on: big is admitted and holds both
    assert rows["localhost"][1:2] == ["2"] and rows["localhost"][4] == f"{jobs['big']} (big, 2 cores)"
    with jobdb.JobDB(home) as reg:
        assert reg.job(jobs["conv"]).state == jobdb.LOST
        assert reg.job(jobs["big"]).state == jobdb.PENDING


def test_an_empty_registry_shows_the_default_cluster(tmp_path):
    r = singa(tmp_path / "empty-home", "hosts")
    assert r.returncode == 0, r.stderr
    rows = rows_of(r.stdout)
    assert list(rows) == ["localhost"] and rows["localhost"][1:2] == ["0"]
    assert rows["localhost"][4] == "-" and "queued" not in r.stdout


def test_a_bad_hosts_file_is_exit_2_with_its_line(home):
    (home / "hosts").write_text("node1 slots=two\n")
    r = singa(home, "hosts")
    assert r.returncode == 2 and r.stdout == ""
    assert f"{home / 'hosts'}:1: host 'node1': slots must be" in r.stderr
    assert "Traceback" not in r.stderr


def test_hosts_check_is_still_a_command(home):
    r = singa(home, "hosts", "check", "--hosts", "localhost:2", "--timeout", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^localhost\s+2\s+\S+\s+local$", r.stdout, re.M), r.stdout


def test_render_of_hosts_with_unknown_capacity():
    from runtime.jobs.resources import HostUsage

    out = render([HostUsage("node5", None, None, 2, 3 * MiB,
                            jobs=[{"id": 4, "name": "x", "state": "RUNNING", "cores": 2,
                                   "mem": 3 * MiB, "procs": 2}])])
    assert rows_of(out) == {"node5": ["-", "2", "-", "3 MiB", "4 (x, 2 cores)"]}


def test_hosts_imports_nothing_heavy(home, jobs):
    heavy = re.compile(r"\| +(numpy|zmq|google|conf|runtime\.(train|ps|comm|model|neuralnet|config)"
                       r"|runtime\.jobs\.(master|launcher|submit|supervisor))\b")
    r = singa(home, "hosts", extra=["-X", "importtime"])
    assert r.returncode == 0, r.stderr
    assert "runtime.jobs.resources" in r.stderr and "runtime.jobs.jobdb" in r.stderr
    bad = [line for line in r.stderr.splitlines() if heavy.search(line)]
    assert not bad, bad
