"""The net graph (runtime/viz/graph.py): layers in SINGA's order, partitions
as `name@p` nodes, the connection layers SINGA adds where partition
dimensions differ (split/slice -> concate, bridge pairs across partitions),
SINGA's visualization JSON, and a PNG drawn by Graphviz `dot`."""
from __future__ import annotations

import shutil

import pytest

from runtime.config import load_job
from runtime.errors import UserError
from runtime.viz import graph
from tests.test_training import make_conf
from tests.viz.test_plot import assert_png

LAYERS = ["data", "ip1", "relu1", "drop1", "ip2", "loss"]
CHAIN = [("data", "ip1"), ("ip1", "relu1"), ("relu1", "drop1"), ("drop1", "ip2"),
         ("ip2", "loss"), ("data", "loss")]

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz dot is not installed (bin/setup installs it)")


@pytest.fixture
def job(tmp_path):
    return load_job(str(make_conf(tmp_path))).proto


def test_one_partition_is_the_layers_and_their_edges(job):
    g = graph.net_graph(job)
    assert g.name == "tiny" and g.phase == "train" and g.npartitions == 1
    assert [n.id for n in g.nodes] == LAYERS
    assert sorted(g.edges) == sorted(CHAIN)
    kinds = {n.id: n.kind for n in g.nodes}
    assert kinds == {"data": "input", "ip1": "neuron", "relu1": "neuron", "drop1": "neuron",
                     "ip2": "neuron", "loss": "loss"}
    ip1 = g.node("ip1")
    assert ip1.type == "InnerProduct" and ip1.shape == (8, 12)
    assert ip1.params == [("w1", (12, 16)), ("b1", (12,))]  # SINGA: W is [out, in]
    # the test net: its own data layer (batch 10), one partition
    t = graph.net_graph(job, "test")
    assert t.phase == "test" and t.node("data").shape == (10, 16)
    with pytest.raises(UserError, match="unknown phase 'training'"):
        graph.net_graph(job, "training")


def test_replicas_over_the_workers_of_a_group(job):
    job.cluster.nworkers_per_group = 2
    g = graph.net_graph(job)
    assert g.npartitions == 2
    assert [n.id for n in g.nodes] == [f"{l}@{p}" for p in (0, 1) for l in LAYERS]
    assert all(n.partition == int(n.id[-1]) for n in g.nodes)
    assert sorted(g.edges) == sorted((f"{s}@{p}", f"{d}@{p}") for p in (0, 1) for s, d in CHAIN)
    assert g.node("data@1").shape == (4, 16)  # the batch of 8 split over 2 workers
    assert not any(n.kind == "connection" for n in g.nodes)
    dot = graph.to_dot(g)
    assert "subgraph cluster_p0" in dot and "subgraph cluster_p1" in dot
    assert "tiny: train net, 2 partitions" in dot


def test_feature_partitions_get_singas_connection_layers(job):
    """ip2 partitioned by feature (dim 1) between layers partitioned by batch:
    split -> concate into it (its neurons see every input), slice -> concate
    out of it, and a bridge pair for each edge into a concate that crosses
    partitions."""
    for layer in job.neuralnet.layer:
        if layer.name == "ip2":
            layer.partition_dim = 1
    g = graph.net_graph(job, npartitions=2)
    ids = {n.id for n in g.nodes}
    for p in (0, 1):
        for name in ("split(drop1)", "concate(split(drop1))", "slice(ip2)",
                     "concate(slice(ip2))"):
            assert f"{name}@{p}" in ids
            n = g.node(f"{name}@{p}")
            assert n.kind == "connection" and n.added
    e = set(g.edges)
    assert ("drop1@0", "split(drop1)@0") in e and ("drop1@0", "ip2@0") not in e
    assert ("split(drop1)@0", "concate(split(drop1))@0") in e  # same partition: direct
    bs = "bridge_src(split(drop1)@0->concate(split(drop1))@1)"
    bd = "bridge_dst(split(drop1)@0->concate(split(drop1))@1)"
    assert {("split(drop1)@0", bs), (bs, bd), (bd, "concate(split(drop1))@1")} <= e
    assert g.node(bs).partition == 0 and g.node(bd).partition == 1
    assert g.node(bs).type == "BridgeSrc" and g.node(bd).type == "BridgeDst"
    assert ("concate(split(drop1))@1", "ip2@1") in e
    assert ("ip2@1", "slice(ip2)@1") in e and ("concate(slice(ip2))@0", "loss@0") in e
    assert ("data@0", "loss@0") in e  # batch -> batch stays direct
    # a feature partition holds all the batch and half the neurons
    assert g.node("ip2@0").shape == (8, 1)  # 3 outputs // 2
    assert len([n for n in g.nodes if n.type.startswith("Bridge")]) == 8


def test_a_layer_with_two_consumers_gets_a_split_layer(tmp_path):
    conf = make_conf(tmp_path, extra='layer { name: "side" type: kSigmoid srclayers: "relu1" }')
    g = graph.net_graph(load_job(str(conf)).proto)
    split = g.node("split(relu1)")
    assert split.kind == "connection" and split.added and split.type == "Split"
    assert {("relu1", "split(relu1)"), ("split(relu1)", "drop1"), ("split(relu1)", "side")} \
        <= set(g.edges)
    assert 'shape=hexagon, style="filled,dashed"' in graph.to_dot(g).split('"split(relu1)" [')[1]


def test_singa_visualization_json(job):
    g = graph.net_graph(job)
    doc = graph.to_json(g, labels={"ip1": "ip1 data:0.5"})
    assert doc["directed"] == 1
    assert [n["id"] for n in doc["nodes"]] == LAYERS
    assert doc["nodes"][1]["label"] == "ip1 data:0.5" and doc["nodes"][0]["label"] == "data"
    links = {(doc["nodes"][l["source"]]["id"], doc["nodes"][l["target"]]["id"])
             for l in doc["links"]}
    assert links == set(CHAIN)


@needs_dot
def test_draw_writes_a_png_and_an_svg(job, tmp_path):
    job.cluster.nworkers_per_group = 2
    g = graph.net_graph(job)
    w, h = assert_png(graph.draw(g, tmp_path / "net.png"))
    assert w > 300 and h > 300
    svg = graph.draw(g, tmp_path / "net.svg").read_text()
    assert "tiny: train net, 2 partitions" in svg and "ip1@1" in svg and "partition 1" in svg
    assert not list(tmp_path.glob(".*tmp*"))


def test_draw_errors_say_what_to_do(job, tmp_path, monkeypatch):
    g = graph.net_graph(job)
    with pytest.raises(UserError, match=r"suffix '\.gif'"):
        graph.draw(g, tmp_path / "net.gif")
    with pytest.raises(UserError, match="does not exist"):
        graph.draw(g, tmp_path / "no" / "net.png")
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on it
    with pytest.raises(UserError, match="Graphviz's 'dot' program was not found.*apt-get install "
                                        "graphviz"):
        graph.draw(g, tmp_path / "net.png")
