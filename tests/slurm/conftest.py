"""Fixtures for the tests against a real Slurm (see cluster.py): `slurm`, a
one-node cluster (its slurmd in this network namespace) shared by the
session. While it is up, SLURM_CONF in this process's environment points
at it, so every `singa` command the tests start, and every Slurm command
those start, talks to it.

Both skip, with the reason, without root or without slurm-wlm and munge.
"""
from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from .cluster import Node, SlurmCluster, available


def skip_unless_available() -> None:
    reason = available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    skip_unless_available()
    host = socket.gethostname()
    # 8 CPUs on this 2-core machine, so the framework examples' 4 and 6
    # processes (one BLAS thread each) fit in one allocation
    with SlurmCluster(tmp_path_factory.mktemp("slurm1"), [Node(host, "127.0.0.1", cpus=8)]) as cluster, \
            pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", str(cluster.conf))  # every singa command of the tests sees it
        yield cluster


@pytest.fixture
def clean_slurm(slurm: SlurmCluster) -> Iterator[SlurmCluster]:
    """The one-node cluster, with no job left in it and its node back in
    service after the test (whatever the test did to it)."""
    yield slurm
    slurm.cancel_all()
    slurm.run("scontrol", "update", f"NodeName={slurm.nodes[0].name}", "State=RESUME")
