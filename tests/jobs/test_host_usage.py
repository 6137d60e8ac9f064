"""runtime.jobs.resources: host keys, a hostfile's capacity, and `usage`
(what `singa hosts` shows), from plain rows: no registry, no processes."""
from __future__ import annotations

from types import SimpleNamespace

from runtime.jobs import resources
from runtime.jobs.hostfile import Host

MiB = 2**20


def test_host_key_maps_this_host_to_localhost_and_canonicalises_addresses():
    assert resources.host_key("localhost") == "localhost"
    assert resources.host_key("127.0.0.1") == "localhost"
    assert resources.host_key("Node1.Example.ORG") == "node1.example.org"
    assert resources.host_key("10.213.5.3") == "10.213.5.3"
    # one IPv6 host however it is spelt: one key, so two jobs never double-book it
    spellings = ["fd00::5", "FD00:0:0::5", "[fd00::5]", "fd00::5%eth0"]
    assert {resources.host_key(s) for s in spellings} == {"fd00::5"}


def test_capacity_adds_the_slots_of_one_host_listed_under_two_names():
    caps = resources.capacity([Host("localhost", 2, "f:1"), Host("127.0.0.1", 1, "f:2"),
                               Host("node2", 4, "f:3", 16 * 2**30), Host("fd00::5", 2, "f:4")])
    assert caps["localhost"]["cores"] == 3  # hostfile.place puts 3 processes there
    assert caps["localhost"]["mem"] == resources.local_memory()
    assert caps["node2"] == {"cores": 4, "mem": 16 * 2**30}
    assert caps["fd00::5"] == {"cores": 2, "mem": None}
    caps = resources.capacity([Host("localhost", 1, "f:1", 512 * MiB),
                               Host("127.0.0.1", 1, "f:2", 256 * MiB)])
    assert caps["localhost"] == {"cores": 2, "mem": 512 * MiB}


def job(id, name, state, demand, capacity=None):
    return SimpleNamespace(id=id, name=name, state=state, demand=demand,
                           options={"capacity": capacity} if capacity is not None else {})


def ask(cores, mem=0, procs=1):
    return {"cores": cores, "mem": mem, "procs": procs, "threads": max(1, cores // procs)}


def test_usage_counts_admitted_jobs_and_lists_queued_ones_per_host():
    cluster = {"localhost": {"cores": 2, "mem": 8 * 2**30}}
    jobs = [
        job(9, "big", "QUEUED", {"localhost": ask(2, 200 * MiB)},
            {"localhost": {"cores": 2, "mem": 8 * 2**30}}),
        job(7, "conv", "RUNNING", {"localhost": ask(1, 91 * MiB)},
            {"localhost": {"cores": 2, "mem": 8 * 2**30}}),
        job(8, "span", "PENDING", {"h1": ask(1, 10 * MiB), "h2": ask(2, 20 * MiB, 2)},
            {"h1": {"cores": 1, "mem": None}, "h2": {"cores": 2, "mem": None},
             "h3": {"cores": 4, "mem": None}}),
        job(10, "wide", "QUEUED", {"h2": ask(2, 5 * MiB, 2)},
            {"h2": {"cores": 8, "mem": 2**30}}),
        job(3, "old", "SUCCEEDED", {"h9": ask(1)}, {"h9": {"cores": 1, "mem": None}}),
        job(4, "engine", "RUNNING", {}),  # Slurm's: asks nothing of ours
    ]
    rows = {r.host: r for r in resources.usage(cluster, jobs)}
    assert list(rows) == ["localhost", "h1", "h2", "h3"]  # the cluster, then by job id
    local = rows["localhost"]
    assert (local.cores, local.mem, local.used_cores, local.used_mem) == (2, 8 * 2**30, 1, 91 * MiB)
    assert [j["id"] for j in local.jobs] == [7] and [j["id"] for j in local.waiting] == [9]
    assert local.waiting[0] == {"id": 9, "name": "big", "state": "QUEUED", "cores": 2,
                                "mem": 200 * MiB, "procs": 1}
    assert (rows["h1"].cores, rows["h1"].used_cores, rows["h1"].mem) == (1, 1, None)
    # job 10, the newest naming h2, saw it with 8 slots: that is what is shown
    h2 = rows["h2"]
    assert (h2.cores, h2.mem, h2.used_cores, h2.used_mem) == (8, 2**30, 2, 20 * MiB)
    assert [j["id"] for j in h2.jobs] == [8] and [j["id"] for j in h2.waiting] == [10]
    # a host a job's hostfile lists but it does not use: shown, nothing held
    assert (rows["h3"].cores, rows["h3"].used_cores, rows["h3"].jobs) == (4, 0, [])
    assert rows["h2"].as_dict()["used_slots"] == 2


def test_usage_keeps_the_default_clusters_capacity_over_a_jobs_view():
    cluster = {"node2": {"cores": 4, "mem": None}}
    rows = resources.usage(cluster, [job(1, "a", "RUNNING", {"node2": ask(1)},
                                         {"node2": {"cores": 1, "mem": None}})])
    assert [(r.host, r.cores, r.used_cores) for r in rows] == [("node2", 4, 1)]
    assert resources.usage({}, []) == []
