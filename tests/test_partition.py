"""Model partitioning inside a worker group, end to end (`singa submit`, real
processes): an MLP whose inner-product layers are partitioned by feature and
a LeNet-style convnet partitioned by batch, over 2 workers in one process
and in two, give the parameters of one worker with the whole batch after 10
steps; the job writes SINGA's visualization/train_net.json; `singa validate`
shows the partitioned net and draws it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import checkpoint
from runtime.config import load_job
from runtime.train import single
from tests.test_distributed import submit
from tests.test_training import make_conf

STEPS = 10

# the tiny MLP of tests/test_training.py without dropout (its masks differ by
# partition) and random skips, with 4 outputs so they split over 2 workers
MLP_FEATURE = {
    'innerproduct_conf {{ num_output: 3 }}': 'innerproduct_conf {{ num_output: 4 }}',
    'layer {{ name: "drop1" type: kDropout srclayers: "relu1" '
    'dropout_conf {{ dropout_ratio: 0.2 }} }}': "",
    'srclayers: "drop1"': 'srclayers: "relu1"',
    "random_skip: 20 prefetching: true": "",
}

LENET = '''
  layer {{ name: "conv1" type: kCConvolution srclayers: "data"
    convolution_conf {{ num_filters: 4 kernel: 3 pad: 1 }}
    param {{ name: "cw1" init {{ type: kUniformSqrtFanIn }} }}
    param {{ name: "cb1" lr_scale: 2 init {{ type: kConstant value: 0 }} }} }}
  layer {{ name: "pool1" type: kCPooling srclayers: "conv1"
    pooling_conf {{ pool: MAX kernel: 2 stride: 2 }} }}
  layer {{ name: "conv2" type: kCConvolution srclayers: "pool1"
    convolution_conf {{ num_filters: 6 kernel: 1 }}
    param {{ name: "cw2" init {{ type: kUniformSqrtFanIn }} }}
    param {{ name: "cb2" lr_scale: 2 init {{ type: kConstant value: 0 }} }} }}
  layer {{
    name: "ip1" type: kInnerProduct srclayers: "conv2"'''


def write(tmp: Path, name: str, cluster: str, net: str = "mlp", feature: bool = False) -> Path:
    conf = make_conf(tmp, name, steps=STEPS, test_freq=STEPS, workspace=name + ".ws")
    text = conf.read_text()
    for a, b in MLP_FEATURE.items():
        text = text.replace(a.format(), b.format())
    if net == "lenet":
        text = text.replace("shape: 16", "shape: 1 shape: 4 shape: 4")
        text = text.replace('''
  layer {
    name: "ip1" type: kInnerProduct srclayers: "data"''', LENET.format())
    if feature:  # the neurons of the inner-product layers (and the relu between) by feature
        for layer in ("ip1", "relu1", "ip2"):
            text = text.replace(f'name: "{layer}" ', f'name: "{layer}" partition_dim: 1 ')
    text = text.replace(f'cluster {{ workspace: "{name}.ws" }}',
                        f'cluster {{ workspace: "{name}.ws" {cluster} }}')
    conf.write_text(text)
    return conf


def singa(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def saved(conf: Path) -> dict[str, np.ndarray]:
    ws = conf.parent / (conf.name + ".ws")
    return {k: v for k, (_, v) in checkpoint.load(
        [str(ws / "checkpoint" / f"step{STEPS}-worker0")]).items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One worker, the whole batch, in this process: the params after 10 steps."""
    tmp = tmp_path_factory.mktemp("partition")
    out = {}
    for net in ("mlp", "lenet"):
        conf = write(tmp, f"one-{net}.conf", "", net)
        worker = single.train(load_job(str(conf), submit=True).proto, log=lambda line: None)
        out[net] = {p.name: p.data.copy() for p in worker.owned_params()}
    return tmp, out


CASES = [("mlp", True, 2), ("mlp", True, 1), ("lenet", False, 2), ("lenet", False, 1)]


@pytest.mark.parametrize("net,feature,per_procs", CASES,
                         ids=[f"{n}-{'feature' if f else 'batch'}-{'one' if p == 2 else 'two'}"
                              "-process" + ("" if p == 2 else "es") for n, f, p in CASES])
def test_a_partitioned_group_equals_one_worker(reference, net, feature, per_procs):
    tmp, ref = reference
    name = f"{net}-{'feature' if feature else 'batch'}-{per_procs}.conf"
    conf = write(tmp, name, f"nworkers_per_group: 2 nworkers_per_procs: {per_procs}", net,
                 feature)
    r = submit(conf)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Test @ step {STEPS}  Loss = " in r.stdout
    got = saved(conf)
    # the checkpoint holds the conf's params, whole, under their conf names
    assert set(got) == set(ref[net])
    for pname, values in ref[net].items():
        assert got[pname].shape == values.shape, pname
        assert np.max(np.abs(got[pname] - values)) <= 1e-5, pname
    # updates: each part of a feature-partitioned param is its own param on the server
    nparams = {"mlp": 4, "lenet": 8}[net] + (4 if feature else 0)
    assert f"Server (0,0): {nparams * STEPS} updates" in r.stdout
    # SINGA's visualization of the net as it ran: both partitions, the bridges between them
    doc = json.loads((conf.parent / (name + ".ws") / "visualization" / "train_net.json")
                     .read_text())
    ids = {n["id"] for n in doc["nodes"]}
    assert {"data@0", "data@1", "ip2@0", "ip2@1", "loss@1"} <= ids
    bridges = [i for i in ids if i.startswith("bridge_src(")]
    assert len(bridges) == (6 if feature else 0)
    assert {n["partition"] for n in doc["nodes"]} == {0, 1}


def test_validate_shows_and_draws_the_partitioned_net(reference):
    tmp, _ = reference
    conf = write(tmp, "show.conf", "nworkers_per_group: 2", "mlp", feature=True)
    r = singa("validate", str(conf), cwd=tmp)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "train net over 2 partitions" in out and "6 bridge pairs between workers" in out
    assert " partition 1 (worker 1):" in out
    row = next(l for l in out.splitlines() if l.strip().startswith("ip1@1 "))
    assert "kInnerProduct" in row and "w1@1 6x16" in row and "8x6" in row
    assert "*bridge_src(slice(ip2)@1->concate(slice(ip2))@0)" in out
    assert "params partitioned by feature" in out and "w2@0 2x12" in out
    j = json.loads(singa("validate", str(conf), "--json", cwd=tmp).stdout)
    assert j["partitions"]["count"] == 2
    assert [r["name"] for r in j["partitions"]["partitions"][0]][:3] == \
        ["data@0", "split(data)@0", "bridge_src(split(data)@0->concate(split(data))@1)"]
    if shutil.which("dot") is None:
        pytest.skip("Graphviz dot is not installed")
    svg = tmp / "net.svg"
    r = singa("validate", str(conf), "--graph", str(svg), cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stderr and "2 partitions" in r.stderr
    text = svg.read_text()
    assert text.startswith("<?xml") and "partition 1" in text
    assert "bridge_src" in text and "concate(split(relu1))@1" in text


def test_validate_refuses_a_loss_partitioned_by_feature(reference):
    tmp, _ = reference
    conf = write(tmp, "bad.conf", "nworkers_per_group: 2", "mlp")
    conf.write_text(conf.read_text().replace('name: "loss" ', 'name: "loss" partition_dim: 1 '))
    r = singa("validate", str(conf), cwd=tmp)
    assert r.returncode == 2
    assert ("with the net partitioned over nworkers_per_group=2 workers: layer 'loss': "
            "partition_dim 1 on a loss layer") in r.stderr
    assert f"{conf}:" in r.stderr  # located in the file


@pytest.mark.parametrize("per_procs", [4, 1])
def test_two_async_groups_of_feature_partitions_finish(reference, per_procs):
    """Two worker groups (asynchronous to each other) of two feature-partitioned
    workers, sharing one process (and its memory) or one process each: the
    groups' updates interleave on the servers, the first worker's tests and
    checkpoints still gather every part."""
    tmp, _ = reference
    conf = write(tmp, f"groups{per_procs}.conf",
                 f"nworker_groups: 2 nworkers_per_group: 2 nworkers_per_procs: {per_procs}",
                 "mlp", feature=True)
    r = submit(conf)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Test @ step {STEPS}  Loss = " in r.stdout
    assert f"group 0: {8 * STEPS} updates" in r.stdout and f"group 1: {8 * STEPS} updates" in r.stdout
    assert {k: v.shape for k, v in saved(conf).items()} == \
        {"w1": (12, 16), "b1": (12,), "w2": (4, 12), "b2": (4,)}
