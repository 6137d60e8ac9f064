"""Cluster topology arithmetic (SINGA v0.3 §5.1 formulas) on the framework blocks."""
from __future__ import annotations

import dataclasses

import pytest

from conf import job_pb2
from runtime.cluster import Cluster
from runtime.errors import UserError


def make(**kw) -> Cluster:
    return Cluster.from_proto(job_pb2.ClusterProto(**kw))


def test_defaults_are_one_process_with_one_worker_and_one_server():
    c = make()
    assert (c.nworker_procs, c.nserver_procs, c.nprocs) == (1, 1, 1)
    assert c.workers_of_procs(0) == [(0, 0)] and c.servers_of_procs(0) == [(0, 0)]
    assert c.share_memory and c.sync_freq == 1 and c.problems() == []


def test_sandblaster_separate_server_processes():
    c = make(nworker_groups=1, nserver_groups=1, nworkers_per_group=3, nservers_per_group=2,
             server_worker_separate=True)
    assert (c.nworker_procs, c.nserver_procs, c.nprocs) == (3, 2, 5)
    assert [c.procs_of_worker(0, w) for w in range(3)] == [0, 1, 2]
    assert [c.procs_of_server(0, s) for s in range(2)] == [3, 4]
    assert c.workers_of_procs(3) == [] and c.servers_of_procs(3) == [(0, 0)]
    assert c.servers_of_procs(0) == []


def test_allreduce_one_worker_and_one_server_per_process():
    c = make(nworkers_per_group=3, nservers_per_group=3)
    assert c.nprocs == 3
    for p in range(3):
        assert c.workers_of_procs(p) == [(0, p)] and c.servers_of_procs(p) == [(0, p)]


def test_downpour_two_groups_share_one_server_group():
    c = make(nworker_groups=2, nserver_groups=1, nworkers_per_group=2, nservers_per_group=2,
             server_worker_separate=True)
    assert (c.nworker_procs, c.nserver_procs, c.nprocs) == (4, 2, 6)
    assert c.procs_of_worker(1, 1) == 3
    assert c.procs_of_server(0, 1) == 5
    assert c.server_group_of(0) == c.server_group_of(1) == 0
    assert c.worker_groups_of_server_group(0) == [0, 1]
    assert c.initialises_params(0) and not c.initialises_params(1)


def test_distributed_hogwild_one_server_group_per_worker_group():
    c = make(nworker_groups=3, nserver_groups=3)
    assert c.nprocs == 3
    assert [c.server_group_of(g) for g in range(3)] == [0, 1, 2]
    assert all(c.initialises_params(g) for g in range(3))
    assert c.servers_of_procs(2) == [(2, 0)] and c.workers_of_procs(2) == [(2, 0)]


def test_in_memory_hogwild_two_groups_in_one_process():
    c = make(nworker_groups=2, nworkers_per_procs=2)
    assert c.nprocs == 1
    assert c.workers_of_procs(0) == [(0, 0), (1, 0)]
    assert c.servers_of_procs(0) == [(0, 0)]


def test_in_memory_sandblaster_two_workers_of_one_group_in_one_process():
    c = make(nworkers_per_group=2, nworkers_per_procs=2)
    assert c.nprocs == 1 and c.workers_of_procs(0) == [(0, 0), (0, 1)]


def test_last_process_partly_filled_is_not_dropped():
    # SINGA's integer division gives 1 process for 3 workers at 2 per process;
    # worker (2, 0) would then live in process 1, which would not exist
    c = make(nworker_groups=3, nworkers_per_procs=2)
    assert c.nworker_procs == 2 and c.nprocs == 2
    assert c.procs_of_worker(2, 0) == 1 and c.workers_of_procs(1) == [(2, 0)]


@pytest.mark.parametrize("kw", [
    dict(nworker_groups=2, nserver_groups=1, nworkers_per_group=2, nservers_per_group=2,
         server_worker_separate=True),
    dict(nworker_groups=4, nworkers_per_group=3, nworkers_per_procs=6, nservers_per_group=4,
         nservers_per_procs=2),
    dict(nworker_groups=2, nworkers_per_group=4, nworkers_per_procs=2),
])
def test_every_worker_and_server_is_hosted_exactly_once(kw):
    c = make(**kw)
    assert c.problems() == []
    workers = [w for p in range(c.nprocs) for w in c.workers_of_procs(p)]
    servers = [s for p in range(c.nprocs) for s in c.servers_of_procs(p)]
    assert sorted(workers) == [(g, w) for g in range(c.nworker_groups)
                               for w in range(c.nworkers_per_group)]
    assert sorted(servers) == [(g, s) for g in range(c.nserver_groups)
                               for s in range(c.nservers_per_group)]
    for p in range(c.nprocs):
        assert all(c.procs_of_worker(g, w) == p for g, w in c.workers_of_procs(p))
        assert all(c.procs_of_server(g, s) == p for g, s in c.servers_of_procs(p))
    assert [e["procs"] for e in c.plan()] == list(range(c.nprocs))


def test_problems_name_the_field_and_values():
    probs = dict(make(nworker_groups=3, nserver_groups=2).problems())
    assert "nworker_groups (3) must be a multiple of nserver_groups (2)" in probs["nworker_groups"]
    probs = dict(make(nworkers_per_group=2, nworkers_per_procs=3).problems())
    assert "must be a multiple of nworkers_per_group" in probs["nworkers_per_procs"]
    probs = dict(make(nworkers_per_group=3, nworkers_per_procs=2).problems())
    assert "nworkers_per_group must be a multiple of it" in probs["nworkers_per_procs"]
    probs = dict(make(nservers_per_group=4, nservers_per_procs=3).problems())
    assert "nservers_per_group must be a multiple of it" in probs["nservers_per_procs"]
    probs = dict(make(nserver_groups=0, sync_freq=0).problems())
    assert probs["nserver_groups"] == "nserver_groups must be >= 1, got 0"
    assert probs["sync_freq"] == "sync_freq must be >= 1, got 0"


def test_check_raises_user_error():
    with pytest.raises(UserError, match="nworker_groups"):
        Cluster.from_proto(job_pb2.ClusterProto(nworker_groups=3, nserver_groups=2), check=True)


def test_out_of_range_indices_raise():
    c = make(nworkers_per_group=2)
    with pytest.raises(ValueError):
        c.procs_of_worker(0, 2)
    with pytest.raises(ValueError):
        c.server_group_of(1)
    assert c.workers_of_procs(5) == []


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        make().nworker_groups = 2  # type: ignore[misc]
