"""Fixtures for multi-host tests: real ssh "hosts" in network namespaces (see netns.py).

Both fixtures skip, with the reason, where namespaces cannot be made (not root, no `ip netns`,
no sshd).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .netns import SshCluster, available


def _skip_unless_available() -> None:
    reason = available()
    if reason is not None:
        pytest.skip(f"multi-host test needs network namespaces with sshd: {reason}")


@pytest.fixture(scope="module")
def ssh_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshCluster]:
    """A 2-host SshCluster shared by the tests of one module, torn down after them."""
    _skip_unless_available()
    with SshCluster(2, tmp_path_factory.mktemp("ssh_cluster")) as cluster:
        yield cluster


@pytest.fixture
def make_ssh_cluster(
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], SshCluster]]:
    """A factory `make_ssh_cluster(n) -> SshCluster` for a test's own cluster(s).

    Every cluster it made is closed when the test ends (closing it earlier is fine).
    """
    _skip_unless_available()
    made: list[SshCluster] = []

    def make(n: int) -> SshCluster:
        cluster = SshCluster(n, tmp_path_factory.mktemp("ssh_cluster"))
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
