"""`--launcher slurm` on a 2-node Slurm cluster: each node a network
namespace (tests/cluster/netns.py) running its own slurmd (`slurmd -N
nodeN`, NodeAddr its namespace's address), slurmctld in this namespace,
reached over the namespaces' bridge. The processes run on both nodes and
`singa view` names them."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from runtime.jobs import jobdb
from tests.cluster.netns import SshCluster
from tests.cluster.netns import available as netns_available
from tests.jobs.test_supervision import ended, singa, submit_detached

from .cluster import Node, SlurmCluster
from .conftest import skip_unless_available
from .test_slurm import csv_mlp, final_test_accuracy


@pytest.fixture(scope="module")
def slurm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    skip_unless_available()
    reason = netns_available()
    if reason is not None:
        pytest.skip(f"a Slurm cluster of namespace hosts needs network namespaces: {reason}")
    with SshCluster(2, tmp_path_factory.mktemp("netns")) as hosts:
        nodes = [Node(f"node{i + 1}", addr, ns)
                 for i, (addr, ns) in enumerate(zip(hosts.addresses, hosts.namespaces))]
        with SlurmCluster(tmp_path_factory.mktemp("slurm2"), nodes, ctld_addr=hosts.bridge_address,
                          name="singatest2") as cluster, pytest.MonkeyPatch.context() as env:
            env.setenv("SLURM_CONF", str(cluster.conf))
            yield cluster


@pytest.fixture
def reg():
    with jobdb.JobDB() as r:
        yield r


def test_the_processes_run_on_both_nodes(slurm2, tmp_path, reg):
    conf = csv_mlp(tmp_path)
    # two cores a process: one node holds one of them
    job_id = submit_detached(conf, "--launcher", "slurm", "--module", "lion.py", "--cores", "2")
    job = ended(reg, job_id, timeout=180)
    assert job.state == jobdb.SUCCEEDED, job.reason + "\n" + slurm2.logs()
    assert final_test_accuracy(tmp_path / "workspace") >= 0.70
    assert sorted(p.host for p in reg.procs(job_id)) == ["node1", "node2"]
    script = next((tmp_path / "workspace").glob("singa-job-*/attempt-1/job.sbatch")).read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --cpus-per-task=2" in script
    # the master listened on the bridge, the nodes' network
    assert re.search(rf"--master tcp://{re.escape(slurm2.nodes[0].addr.rsplit('.', 1)[0])}\.1:",
                     script), script
    view = singa("view", str(job_id), cwd=tmp_path).stdout
    assert re.search(r"^\s*0\s+node\d\s", view, re.M) and re.search(r"^\s*1\s+node\d\s", view, re.M), view
