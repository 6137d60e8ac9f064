"""Partitioning a net over the workers of a group (runtime/neuralnet/
partition.py, bridge.py): SINGA's eight-row table with SINGA's names, the
order every worker runs its layers in, the partitioned graph computing what
the unpartitioned net computes (values and gradients), the params of
feature partitions, bridges between two worker threads, and the rules that
refuse what cannot be partitioned."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from conf import job_pb2
from runtime.errors import ConfigError
from runtime.neuralnet.bridge import attach
from runtime.neuralnet.layer import kOneToAll, kOneToOne
from runtime.neuralnet.net import NeuralNet
from runtime.neuralnet.partition import connection, grad_scale
from runtime.ps.group import BridgeHub, BridgeLink
from tests.test_training import write_data

TRAIN = job_pb2.kTrain
FWD, BWD = job_pb2.kTrain | job_pb2.kForward, job_pb2.kTrain | job_pb2.kBackward


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("part") / "train.bin"
    write_data(path, 64, 1)
    return path


def DATA(path, batch=8, extra=""):
    return (f'layer {{ name: "data" type: kRecordInput {extra} store_conf {{ backend: "kvfile" '
            f'path: "{path}" batchsize: {batch} shape: 16 std_value: 2 }} }}')


def IP(name, src, out, dim=None, w="w", b="b", extra=""):
    pd = "" if dim is None else f"partition_dim: {dim}"
    return (f'layer {{ name: "{name}" type: kInnerProduct srclayers: "{src}" {pd} {extra} '
            f'innerproduct_conf {{ num_output: {out} }} '
            f'param {{ name: "{w}" init {{ type: kUniform low: -0.3 high: 0.3 }} }} '
            f'param {{ name: "{b}" init {{ type: kUniform low: -0.1 high: 0.1 }} }} }}')


def L(name, type_, src, dim=None, extra=""):
    pd = "" if dim is None else f"partition_dim: {dim}"
    return f'layer {{ name: "{name}" type: {type_} srclayers: "{src}" {pd} {extra} }}'


LOSS = 'layer { name: "loss" type: kSoftmaxLoss srclayers: "%s" srclayers: "data" }'


def net_of(*layers: str, net_dim: int = 0) -> job_pb2.NetProto:
    return text_format.Parse(f"partition_dim: {net_dim} " + " ".join(layers), job_pb2.NetProto())


def edges(net: NeuralNet) -> set[tuple[str, str]]:
    return {(s.name, l.name) for l in net.layers for s in net.srclayers(l)}


# -------------------------------------------------------------- the table ---

@pytest.mark.parametrize("src,dst,conn,kind", [
    (0, 0, kOneToOne, None), (1, 1, kOneToOne, None), (0, 0, kOneToAll, None),
    (1, 0, kOneToOne, "slice"), (0, 1, kOneToOne, "slice"), (1, 0, kOneToAll, "slice"),
    (0, 1, kOneToAll, "split"), (1, 1, kOneToAll, "split")])
def test_singas_table(src, dst, conn, kind):
    assert connection(src, dst, conn) == kind


# every src/dst combination, with the dst OneToOne (ReLU) or OneToAll (InnerProduct)
COMBOS = [(s, d, t) for s in (0, 1) for d in (0, 1) for t in ("kReLU", "kInnerProduct")]


@pytest.mark.parametrize("src_dim,dst_dim,dst_type", COMBOS)
def test_inserted_layers_and_names_follow_the_table(data, src_dim, dst_dim, dst_type):
    dst = (IP("b", "a", 4, dst_dim, "wb", "bb") if dst_type == "kInnerProduct"
           else L("b", "kReLU", "a", dst_dim))
    net = NeuralNet.create(net_of(DATA(data), IP("a", "data", 6, src_dim), dst, LOSS % "b"),
                           TRAIN, 2, allocate=False)
    names = [l.name for l in net.layers]
    conn = connection(src_dim, dst_dim, kOneToAll if dst_type == "kInnerProduct" else kOneToOne)
    e = edges(net)
    if conn is None:  # direct: partition p reads partition p
        assert {("a@0", "b@0"), ("a@1", "b@1")} <= e
        assert not any(n.startswith(("slice(a)", "split(a)", "concate(slice(a))",
                                     "concate(split(a))")) for n in names)
        return
    c, cat = f"{conn}(a)", f"concate({conn}(a))"
    for p in (0, 1):
        mid, join = net.layer(f"{c}@{p}"), net.layer(f"{cat}@{p}")
        assert mid.proto.type == (job_pb2.kSlice if conn == "slice" else job_pb2.kSplit)
        assert join.proto.type == job_pb2.kConcate
        # slice along the dst's dim, partitioned like the src; concate along the src's dim,
        # partitioned like the dst
        if conn == "slice":
            assert mid.proto.slice_conf.slice_dim == dst_dim
            assert mid.proto.slice_conf.num_slices == 2
        else:
            assert mid.proto.split_conf.num_splits == 2
        assert (mid.proto.partition_dim, join.proto.partition_dim) == (src_dim, dst_dim)
        assert join.proto.concate_conf.concate_dim == src_dim
        assert mid.proto.partition_id == join.proto.partition_id == p
        assert (f"a@{p}", f"{c}@{p}") in e and (f"{cat}@{p}", f"b@{p}") in e
        assert (f"a@{p}", f"b@{p}") not in e
        assert join.grad_scale == grad_scale(src_dim, dst_dim, 2)
    # across partitions: a bridge pair named by SINGA's rule; within one: direct
    for i, j in ((0, 1), (1, 0)):
        edge = f"{c}@{i}->{cat}@{j}"
        bs, bd = net.layer(f"bridge_src({edge})"), net.layer(f"bridge_dst({edge})")
        assert bs.proto.type == job_pb2.kBridgeSrc and bd.proto.type == job_pb2.kBridgeDst
        assert (bs.proto.partition_id, bd.proto.partition_id) == (i, j)
        assert {(f"{c}@{i}", bs.name), (bs.name, bd.name), (bd.name, f"{cat}@{j}")} <= e
        assert not bs.remote and not bd.remote  # one net: they connect like any edge
    assert ("slice(a)@0", "concate(slice(a))@0") in e or ("split(a)@0", "concate(split(a))@0") in e
    # the concate's sources are in partition order: piece i from partition i
    assert [s.name for s in net.srclayers(net.layer(f"{cat}@1"))] == \
        [f"bridge_dst({c}@0->{cat}@1)", f"{c}@1"]


def test_names_a_feature_partition_params_and_shapes(data):
    net = NeuralNet.create(net_of(DATA(data), IP("ip", "data", 6, 1, "w", "b"), LOSS % "ip"),
                           TRAIN, 2)
    ip0 = net.layer("ip@0")
    assert [p.name for p in ip0.params] == ["w@0", "b@0"]
    assert ip0.shape == (8, 3)                       # all of the batch, half the neurons
    assert net.layer("data@1").shape == (4, 16)      # half of the batch
    assert net.layer("concate(split(data))@1").shape == (8, 16)
    assert net.layer("concate(slice(ip))@0").shape == (4, 6)
    # the conf params whole, the parts views of their rows
    assert list(net.wholes) == ["w", "b"] and net.wholes["w"].shape == (6, 16)
    owned = [p.name for p in net.params if p.owner is None]
    assert owned == ["w", "b"]
    w, w1 = net.wholes["w"], net.param("w@1")
    assert np.shares_memory(w.data, w1.data) and w1.data.shape == (3, 16)
    w.data[...] = np.arange(96, dtype=np.float32).reshape(6, 16)
    np.testing.assert_array_equal(w1.data, w.data[3:])
    # what the servers hold: each part its own param, one replica each
    assert [p.name for p in net.group_params()] == ["w@0", "b@0", "w@1", "b@1"]
    assert {net.replicas(p) for p in net.group_params()} == {1}
    part = net.part_of(w1)
    assert (part.name, part.index, part.count, part.lo, part.hi) == ("w", 1, 2, 3, 6)


def test_batch_partitions_are_replicas(data):
    net = NeuralNet.create(net_of(DATA(data), IP("ip", "data", 6), LOSS % "ip"), TRAIN, 2)
    a, b = net.layer("ip@0").params[0], net.layer("ip@1").params[0]
    assert a.name == b.name == "w" and b.owner is a and b.data is a.data
    assert [p.name for p in net.group_params()] == ["w", "b"]
    assert net.replicas(a) == 2
    assert not any(l.proto.type in (job_pb2.kSlice, job_pb2.kConcate, job_pb2.kBridgeSrc)
                   for l in net.layers)


def test_a_second_edge_out_of_a_source_gets_its_own_connection_layers(data):
    net = NeuralNet.create(net_of(DATA(data), IP("x", "data", 4, 1, "wx", "bx"),
                                  IP("y", "data", 4, 1, "wy", "by"),
                                  'layer { name: "c" type: kConcate srclayers: "x" srclayers: "y"'
                                  ' concate_conf { concate_dim: 1 } partition_dim: 0 }',
                                  IP("z", "c", 4, 0, "wz", "bz"), LOSS % "z"), TRAIN, 2,
                           allocate=False)
    names = {l.name for l in net.layers}
    assert {"split(data)@0", "concate(split(data))@0", "split(data->y)@0",
            "concate(split(data->y))@0"} <= names


# ---------------------------------------------------------------- order ---

def test_each_worker_sends_before_it_receives(data):
    """A worker's net: its partition only, in an order where every stage's
    bridge_src halves come before its bridge_dst halves."""
    conf = net_of(DATA(data), IP("ip1", "data", 6, 1, "w1", "b1"), L("r", "kReLU", "ip1", 1),
                  IP("ip2", "r", 4, 1, "w2", "b2"), LOSS % "ip2")
    whole = [l.name for l in NeuralNet.create(conf, TRAIN, 2, allocate=False).layers]
    for p in (0, 1):
        net = NeuralNet.create(conf, TRAIN, 2, partition=p, allocate=False)
        names = [l.name for l in net.layers]
        assert names == [n for n in whole if n in names]  # the whole graph's order
        assert all(l.proto.partition_id == p for l in net.layers)
        for stage in ("split(data)", "split(r)", "slice(ip2)"):
            sends = [i for i, n in enumerate(names) if n.startswith(f"bridge_src({stage}")]
            recvs = [i for i, n in enumerate(names) if n.startswith(f"bridge_dst({stage}")]
            assert sends and recvs and max(sends) < min(recvs)
        for dst in (l for l in net.layers if l.proto.type == job_pb2.kBridgeDst):
            # its source runs on the other worker; it receives what its twin here makes
            assert dst.remote and net.srclayers(dst) == [] and dst.src_partition == 1 - p
            assert dst.twin.name == dst.name.split("->")[0][len("bridge_dst("):-1] + str(p)
            assert dst.shape == dst.twin.shape
        # the params of partition 1 are its own (the servers hold them); partition 0 also
        # holds the conf params whole
        owned = [q.name for q in net.params if q.owner is None]
        assert owned == (["w1", "b1", "w2", "b2"] if p == 0 else ["w1@1", "b1@1", "w2@1", "b2@1"])


def test_test_and_validation_nets_stay_whole(data):
    """A worker's job marks its layers as partition 1 of 2 (runtime.train.node.partition_job):
    its training net is that partition, its test net the whole net with whole batches."""
    conf = net_of(DATA(data), IP("ip", "data", 6, 1), LOSS % "ip")
    for layer in conf.layer:
        layer.num_partitions, layer.partition_id = 2, 1
    train = NeuralNet.create(conf, TRAIN, allocate=False)
    assert (train.npartitions, train.partition) == (2, 1)
    assert {l.proto.partition_id for l in train.layers} == {1}
    test = NeuralNet.create(conf, job_pb2.kTest, allocate=False)
    assert [l.name for l in test.layers] == ["data", "ip", "loss"]
    assert test.layer("data").shape == (8, 16) and test.layer("ip").shape == (8, 6)


# ------------------------------------------------------------ numerics ---

def run(net: NeuralNet, layers=None) -> None:
    """One BP step (forward, backward) over `layers` (default: the net's)."""
    layers = net.layers if layers is None else layers
    for l in layers:
        l.compute_feature(FWD, net.srclayers(l))
    for l in reversed(layers):
        if l.is_input or (l.grad is None and not l.is_loss):
            continue
        l.compute_gradient(BWD, net.srclayers(l))
        if not l.is_loss:
            l.grad = None


def init(net: NeuralNet, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    for p in net.params:
        if p.owner is None:
            p.init_values(rng)


def group_view(net: NeuralNet, name: str) -> tuple[Any, Any]:
    """A conf param's values and the group's gradient: the parts' rows of a
    feature partition, the mean over the replicas of a batch partition (what
    the servers apply)."""
    if name in net.wholes:
        parts = sorted((p for p in net.params if net.part_of(p) and net.part_of(p).name == name),
                       key=lambda p: net.part_of(p).index)
        return net.wholes[name].data, np.concatenate([p.grad for p in parts])
    reps = [p for p in net.params if p.name == name]
    return reps[0].data, sum(p.grad for p in reps) / len(reps)  # type: ignore[misc]  # every grad is set by now


def mlp(data, d1, d2, d3) -> list[str]:
    return [DATA(data), IP("ip1", "data", 12, d1, "w1", "b1"), L("r", "kReLU", "ip1", d2),
            IP("ip2", "r", 4, d3, "w2", "b2"), LOSS % "ip2"]


@pytest.mark.parametrize("dims", [(0, 0, 0), (1, 1, 1), (1, 0, 1), (0, 1, 0), (1, 1, 0)])
def test_partitioned_graph_computes_the_unpartitioned_gradient(data, dims):
    def conf(d):
        return net_of(*mlp(data, *d))

    ref = NeuralNet.create(conf((0, 0, 0)), TRAIN)
    init(ref)
    run(ref)
    net = NeuralNet.create(conf(dims), TRAIN, 2)
    init(net)
    run(net)
    for name in ("w1", "b1", "w2", "b2"):
        values, grad = group_view(net, name)
        np.testing.assert_array_equal(values, ref.param(name).data)  # the same initial values
        np.testing.assert_allclose(grad, ref.param(name).grad, atol=1e-6, err_msg=name)
    loss = np.mean([net.layer(f"loss@{p}").metrics()["loss"] for p in (0, 1)])
    assert loss == pytest.approx(ref.layer("loss").metrics()["loss"], rel=1e-6)


def test_hybrid_convnet_computes_the_unpartitioned_gradient(data):
    """Convolutions by batch or by filters, the inner product by feature."""
    def conf(conv_dim, ip_dim):
        return net_of(
            DATA(data).replace("shape: 16", "shape: 1 shape: 4 shape: 4"),
            f'layer {{ name: "conv" type: kCConvolution srclayers: "data" partition_dim: {conv_dim}'
            ' convolution_conf { num_filters: 4 kernel: 3 pad: 1 }'
            ' param { name: "cw" init { type: kGaussian std: 0.3 } }'
            ' param { name: "cb" init { type: kConstant value: 0.1 } } }',
            L("pool", "kCPooling", "conv", conv_dim,
              "pooling_conf { pool: MAX kernel: 2 stride: 2 }"),
            L("relu", "kReLU", "pool", conv_dim),
            IP("ip", "relu", 4, ip_dim, "w", "b"), LOSS % "ip")

    ref = NeuralNet.create(conf(0, 0), TRAIN)
    init(ref)
    run(ref)
    for dims in ((0, 1), (1, 0), (1, 1)):
        net = NeuralNet.create(conf(*dims), TRAIN, 2)
        init(net)
        run(net)
        for name in ("cw", "cb", "w", "b"):
            values, grad = group_view(net, name)
            np.testing.assert_array_equal(values, ref.param(name).data)
            np.testing.assert_allclose(grad, ref.param(name).grad, atol=1e-6,
                                       err_msg=f"{dims} {name}")


def test_two_worker_threads_through_bridges_equal_the_whole_graph(data):
    """Each partition in its own net and thread, the bridges through a
    process's hub (arrays passed, not copied), for three steps."""
    text = mlp(data, 1, 0, 1)
    whole = NeuralNet.create(net_of(*text), TRAIN, 2)
    init(whole)
    nets = [NeuralNet.create(net_of(*text), TRAIN, 2, partition=p) for p in (0, 1)]
    hub = BridgeHub()
    for p, net in enumerate(nets):
        # 4 stages between the workers (split(data), slice(ip1), split(r), slice(ip2)),
        # a sending and a receiving half of each in every worker
        assert attach(net.layers, BridgeLink(hub, 0, p, 0, lambda g, w: 0)) == 8
        for q in net.params:  # the values of the whole graph
            src = whole.param(q.name)
            q.data = src.data
    src0 = nets[0].layer("bridge_src(slice(ip1)@0->concate(slice(ip1))@1)")
    errors = []

    def work(net):
        try:
            for _ in range(3):
                run(net)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in nets]
    for t in threads:
        t.start()
    for _ in range(3):
        run(whole)
    for t in threads:
        t.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)
    for net in nets:
        for q in net.params:
            np.testing.assert_allclose(q.grad, whole.param(q.name).grad, atol=1e-6, err_msg=q.name)
    # no copy: the receiving half holds the very array the sending half had
    dst1 = nets[1].layer("bridge_dst(slice(ip1)@0->concate(slice(ip1))@1)")
    assert dst1.data is src0.data


# ---------------------------------------------------------------- rules ---

def problems(conf: job_pb2.NetProto, n: int = 2) -> list[str]:
    with pytest.raises(ConfigError) as e:
        NeuralNet.create(conf, TRAIN, n, allocate=False)
    return [str(p) for p in e.value.problems]


def test_what_cannot_be_partitioned_by_feature_is_refused(data):
    found = problems(net_of(DATA(data), IP("ip", "data", 6), LOSS % "ip", net_dim=1))
    assert any("layer 'data': partition_dim 1 (the net's partition_dim) on an input layer" in p
               and "set partition_dim: 0 on it" in p for p in found)
    assert any("layer 'loss': partition_dim 1 (the net's partition_dim) on a loss layer" in p
               for p in found)
    found = problems(net_of(DATA(data), IP("ip", "data", 6, 0),
                            L("sm", "kSoftmax", "ip", 1), LOSS % "sm"))
    assert any("layer 'sm': partition_dim 1 on a kSoftmax layer, which cannot divide its "
               "neurons" in p for p in found)
    found = problems(net_of(DATA(data), IP("ip", "data", 6, 1, extra="").replace(
        "num_output: 6", "num_output: 6 transpose: true"), LOSS % "ip"))
    assert any("transpose: true" in p for p in found)
    found = problems(net_of(DATA(data), IP("ip", "data", 5, 1), LOSS % "ip"))
    assert any("num_output 5 cannot be split over num_partitions 2" in p for p in found)


def test_lrn_split_by_channel_is_a_warning(data):
    conf = net_of(
        DATA(data).replace("shape: 16", "shape: 1 shape: 4 shape: 4"),
        'layer { name: "conv" type: kCConvolution srclayers: "data" partition_dim: 1'
        ' convolution_conf { num_filters: 4 kernel: 3 pad: 1 }'
        ' param { name: "cw" init { type: kGaussian std: 0.3 } } param { name: "cb" } }',
        L("norm", "kLRN", "conv", 1, "lrn_conf { local_size: 3 }"),
        IP("ip", "norm", 4, 0), LOSS % "ip")
    net = NeuralNet.create(conf, TRAIN, 2, allocate=False)
    assert any("LRN normalises across channels" in p.message and p.severity == "warning"
               for p in net.warnings)


def test_an_rbm_pair_and_an_unrolled_net_partition_by_batch():
    """A vis/hid pair reads each other (the hid comes later in the order);
    unrolled copies keep their names, partition by partition."""
    from runtime.config import load_job

    root = Path(__file__).resolve().parents[2] / "examples"
    rbm = load_job(str(root / "rbm" / "rbm1.conf")).proto.neuralnet
    net = NeuralNet.create(rbm, TRAIN, 2, partition=1, allocate=False)
    assert [l.name for l in net.layers] == ["data@1", "RBMVis@1", "RBMHid@1"]
    assert [s.name for s in net.srclayers(net.layer("RBMVis@1"))] == ["data@1", "RBMHid@1"]
    rnn = load_job(str(root / "char-rnn" / "job.conf")).proto.neuralnet
    one = NeuralNet.create(rnn, TRAIN, allocate=False)
    net = NeuralNet.create(rnn, TRAIN, 2, partition=0, allocate=False)
    assert len(net.layers) == len(one.layers) and net.layers[0].name == "0#data@0"
    assert [p.name for p in net.group_params()] == [p.name for p in one.params if p.owner is None]
