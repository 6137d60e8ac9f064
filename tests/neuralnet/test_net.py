"""The net builder: phase filter, split insertion, topological order (with
RBM pairs), cycles, unknown sources, param counts and share_from."""
import numpy as np
import pytest
from google.protobuf import text_format

from conf import job_pb2
from runtime.errors import ConfigError
from runtime.neuralnet.layer import Layer, layer_registry
from runtime.neuralnet.net import NeuralNet, filter_phase


class _In(Layer):
    is_input = True
    dst_layer_connection = 2

    def setup(self, srclayers):
        self.shape = (2, 3)

    def compute_feature(self, flag, srclayers):
        self.data = np.ones(self.shape, np.float32)

    def compute_gradient(self, flag, srclayers):
        pass


class _Lin(Layer):
    num_params = 1

    def setup(self, srclayers):
        self.shape = srclayers[0].shape_for(self)
        self.make_param(0, (self.shape[1], self.shape[1]))

    def compute_feature(self, flag, srclayers):
        self.data = srclayers[0].data_for(self) @ self.params[0].data

    def compute_gradient(self, flag, srclayers):
        pass


for name, cls in (("TIn", _In), ("TLin", _Lin)):
    if name not in layer_registry:
        layer_registry.add(name, cls)


def net(text: str) -> job_pb2.NetProto:
    return text_format.Parse(text, job_pb2.NetProto())


def L(name, kind="TLin", srcs=(), params=(), extra=""):
    s = " ".join(f'srclayers: "{x}"' for x in srcs)
    p = " ".join(f'param {{ name: "{x}" }}' for x in params)
    return f'layer {{ name: "{name}" user_type: "{kind}" {s} {p} {extra} }}'


def test_phase_filter_keeps_duplicates_across_phases():
    n = net(L("data", "TIn", extra="include: kTrain") + L("data", "TIn", extra="include: kTest")
            + L("a", srcs=["data"], params=["w"]))
    assert [p.name for _, p in filter_phase(n, job_pb2.kTrain)] == ["data", "a"]
    assert [i for i, _ in filter_phase(n, job_pb2.kTest)] == [1, 2]
    assert filter_phase(n, job_pb2.kTrain)[0][1].partition_dim == 0


def test_split_layer_inserted_for_two_consumers():
    n = NeuralNet.create(net(L("data", "TIn") + L("a", srcs=["data"], params=["wa"])
                             + L("b", srcs=["a"], params=["wb"]) + L("c", srcs=["a"], params=["wc"])),
                         job_pb2.kTrain)
    names = [l.name for l in n.layers]
    assert names == ["data", "a", "split(a)", "b", "c"]
    assert [s.name for s in n.srclayers(n.layer("b"))] == ["split(a)"]
    # input layers feed many consumers directly
    assert "split(data)" not in names


def test_topological_order_and_rbm_pair():
    n = NeuralNet.create(net(L("hid", srcs=["vis"], params=["wh"])
                             + L("vis", srcs=["data", "hid"], params=["wv"])
                             + L("data", "TIn")), job_pb2.kTrain)
    assert [l.name for l in n.layers] == ["data", "vis", "hid"]


def test_cycle_unknown_src_and_param_count_reported_together():
    with pytest.raises(ConfigError) as e:
        NeuralNet.create(net(L("data", "TIn") + L("a", srcs=["b", "data"], params=["w1"])
                             + L("b", srcs=["a"], params=["w2"]) + L("c", srcs=["nope"], params=["w3"])
                             + L("d", srcs=["data"])), job_pb2.kTrain)
    msgs = [str(p) for p in e.value.problems]
    assert any("cycle among layers 'a', 'b'" in m for m in msgs), msgs
    assert any("layer 'c' srclayers[0]: unknown srclayer 'nope'" in m for m in msgs), msgs
    assert any("layer 'd': a TLin layer takes 1 param(s), got 0" in m for m in msgs), msgs


def test_share_from_shares_values_and_config():
    n = NeuralNet.create(net(L("data", "TIn") + L("a", srcs=["data"], params=["w"])
                             + 'layer { name: "b" user_type: "TLin" srclayers: "a" '
                               'param { name: "w2" share_from: "w" } }'), job_pb2.kTrain)
    w, w2 = n.param("w"), n.param("w2")
    assert w2.owner is w and w2.data is w.data and w2.grad is not w.grad


def test_unknown_share_from_is_located():
    with pytest.raises(ConfigError) as e:
        NeuralNet.create(net(L("data", "TIn") + 'layer { name: "a" user_type: "TLin" srclayers: "data" '
                             'param { name: "w" share_from: "zz" } }'), job_pb2.kTrain)
    assert "layer 'a' param[0].share_from: param 'w' shares from unknown param 'zz'" in str(e.value)


def test_unknown_user_type_lists_known():
    with pytest.raises(ConfigError) as e:
        NeuralNet.create(net(L("data", "Nope")), job_pb2.kTrain)
    assert "unknown layer type 'Nope' (user_type)" in str(e.value)
    assert "registered user types: " in str(e.value) and "--module FILE.py" in str(e.value)
