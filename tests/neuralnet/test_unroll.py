"""Unrolling (SINGA's `NeuralNet::Unrolling`) and BPTT over the unrolled net:
copy names, the wiring by unroll_conn_type and shift, params shared by value
and gradient, which nets are unrolled, the problems reported, and a numeric
gradient check of BPTT through a GRU unrolled over 5 steps."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from conf import job_pb2
from runtime.errors import ConfigError
from runtime.neuralnet.layer import Layer, kOneToMany, layer_registry
from runtime.neuralnet.net import NeuralNet
from runtime.train.algorithms.bptt import BPTTWorker, parse_metrics

TRAIN = job_pb2.kTrain


class _Steps(Layer):
    """An input that holds 4 steps of [2, 3] data (like kCharRNN)."""

    is_input = True
    dst_layer_connection = kOneToMany
    num_steps = 4

    def setup(self, srclayers):
        self.shape = (2, 3)

    def data_at(self, k):
        return np.full(self.shape, k, np.float32)

    def compute_feature(self, flag, srclayers):
        self.data = self.data_at(0)

    def compute_gradient(self, flag, srclayers):
        pass


class _Any(Layer):
    """Any number of sources (summed), any number of [3, 3] params."""

    num_params = None
    dst_layer_connection = kOneToMany

    def setup(self, srclayers):
        self.shape = (2, 3)
        for k in range(len(self.proto.param)):
            self.make_param(k, (3, 3))

    def compute_feature(self, flag, srclayers):
        self.data = sum((s.data_for(self) for s in srclayers), np.zeros(self.shape, np.float32))

    def compute_gradient(self, flag, srclayers):
        pass


class _Lin(_Any):
    dst_layer_connection = 0  # kOneToOne: a split layer feeds several consumers


for _name, _cls in (("USteps", _Steps), ("UAny", _Any), ("ULin", _Lin)):
    if _name not in layer_registry:
        layer_registry.add(_name, _cls)


def build(text: str, **kw) -> NeuralNet:
    return NeuralNet.create(text_format.Parse(text, job_pb2.NetProto()), TRAIN, **kw)


def L(name, kind="UAny", srcs=(), params=(), extra=""):
    s = " ".join(f'srclayers: "{x}"' for x in srcs)
    p = " ".join(f'param {{ name: "{x}" }}' for x in params)
    return f'layer {{ name: "{name}" user_type: "{kind}" {s} {p} {extra} }}'


def srcs_of(net: NeuralNet, name: str) -> list[str]:
    return [s.name for s in net.srclayers(net.layer(name))]


NET = ("unroll_len: 3 " + L("in", "USteps", extra="unroll_len: 1")
       + L("a", srcs=["in"], params=["w"], extra="unroll_conn_type: kUnrollOneToAll")
       + L("b", srcs=["a"], extra="shift: 1")
       + L("c", srcs=["b"], extra="unroll_conn_type: kUnrollFirstToLast")
       + L("d", srcs=["a", "c"], extra="unroll_conn_type: kUnrollOneToOne "
                                       "unroll_conn_type: kUnrollOneToAll"))


# ---------------------------------------------------------------- wiring ---
def test_copies_are_named_and_wired_by_conn_type_and_shift():
    net = build(NET)
    assert net.unrolled
    assert [l.name for l in net.copies("a")] == ["0#a", "1#a", "2#a"]
    assert [l.proto.unroll_index for l in net.copies("d")] == [0, 1, 2]
    assert net.copies("in")[0].name == "0#in" and len(net.copies("in")) == 1
    assert [srcs_of(net, f"{k}#a") for k in range(3)] == [["0#in"]] * 3        # one to all
    assert [srcs_of(net, f"{k}#b") for k in range(3)] == [[], ["0#a"], ["1#a"]]  # shift 1
    assert [srcs_of(net, f"{k}#c") for k in range(3)] == [["2#b"], [], []]     # first to last
    assert srcs_of(net, "1#d") == ["1#a", "0#c", "1#c", "2#c"]
    order = [l.name for l in net.layers]
    assert order.index("2#b") < order.index("0#c") < order.index("2#d")
    assert net.origin(net.layer("2#d")) == "d" and net.copy_of("c", 2).name == "2#c"


def test_params_share_values_and_gradient_with_copy_0():
    net = build(NET)
    w0, w1, w2 = (net.param(f"{k}#w") for k in range(3))
    assert w1.proto.share_from == "0#w" and w1.owner is w0 and w2.owner is w0
    assert w1.data is w0.data and w2.grad is w0.grad
    assert w0.trainable and not w1.trainable and not w2.trainable
    assert net.head(w2) is w0 and net.head(w0) is w0
    assert [p.name for p in net.params if p.owner is None] == ["0#w"]  # what a checkpoint holds


def test_conf_share_from_names_the_conf_param():
    net = build(NET + L("e", srcs=["a"], extra='param { name: "v" share_from: "w" }'))
    v0, v2, w0 = net.param("0#v"), net.param("2#v"), net.param("0#w")
    assert v0.proto.share_from == "0#w" and v0.owner is w0 and v2.owner is w0
    assert v2.data is w0.data
    # v's copies add to v's gradient; v and w each report theirs (the server sums them)
    assert v2.grad is v0.grad and v0.grad is not w0.grad and v0.trainable


def test_split_layers_for_copies_with_two_consumers():
    net = build("unroll_len: 2 " + L("in", "USteps", extra="unroll_len: 1")
                + L("a", "ULin", srcs=["in"], params=["w"],
                    extra="unroll_conn_type: kUnrollOneToAll")
                + L("b", srcs=["a"]) + L("c", srcs=["a"]))
    assert srcs_of(net, "1#b") == ["split(1#a)"] and srcs_of(net, "1#c") == ["split(1#a)"]
    assert net.origin("split(1#a)") == "split(1#a)"


def test_which_nets_are_unrolled():
    plain = L("in", "USteps") + L("a", srcs=["in"], params=["w"])
    net = build(plain)
    assert not net.unrolled and [l.name for l in net.layers] == ["in", "a"]
    assert net.param("w").name == "w" and net.copy_of("a", 0).name == "a"
    assert [l.name for l in build(plain, unroll=True).layers] == ["0#in", "0#a"]
    # a recurrent layer unrolls the net even with unroll_len 1 (SINGA's sample.conf)
    gru = ('layer { name: "g" type: kGRU srclayers: "in" gru_conf { dim_hidden: 2 } '
           + " ".join(f'param {{ name: "p{k}" }}' for k in range(6)) + " }")
    net = build(L("in", "USteps") + gru)
    assert [l.name for l in net.layers] == ["0#in", "0#g"] and net.param("0#p3").shape == (2, 2)


def test_gru_copies_take_the_previous_copy():
    gru = ('layer { name: "g" type: kGRU srclayers: "in" unroll_conn_type: kUnrollOneToAll '
           'gru_conf { dim_hidden: 2 } ' + " ".join(f'param {{ name: "p{k}" }}' for k in range(6))
           + " }")
    net = build("unroll_len: 3 " + L("in", "USteps", extra="unroll_len: 1") + gru)
    assert [srcs_of(net, f"{k}#g") for k in range(3)] == [["0#in"], ["0#in", "0#g"],
                                                          ["0#in", "1#g"]]


# -------------------------------------------------------------- problems ---
def test_problems_of_unrolled_layers_are_reported_once():
    with pytest.raises(ConfigError) as e:
        build("unroll_len: 4 " + L("in", "USteps", extra="unroll_len: 1")
              + L("a", srcs=["in"])                                   # one to one, 4 vs 1
              + L("b", srcs=["in"], extra="unroll_conn_type: kUnrollCustomized")
              + L("c", srcs=["in", "nope"], extra="unroll_conn_type: kUnrollOneToAll "
                  "unroll_conn_type: kUnrollOneToAll unroll_conn_type: kUnrollOneToAll")
              + L("d", srcs=["in"], extra="unroll_conn_type: kUnrollOneToAll shift: -1"))
    msgs = [str(p) for p in e.value.problems]
    assert any("layer 'a' srclayers[0]: 'a' has 4 unrolled copies and connects one to one "
               "(unroll_conn_type kUnrollOneToOne, shift 0) to 'in', which has 1; set "
               "unroll_conn_type: kUnrollOneToAll" in m for m in msgs), msgs
    assert any("layer 'b' unroll_conn_type[0]: unroll_conn_type kUnrollCustomized is not "
               "implemented" in m for m in msgs), msgs
    assert any("layer 'c' unroll_conn_type: 3 unroll_conn_type values for 2 srclayers" in m
               for m in msgs), msgs
    unknown = [m for m in msgs if "unknown srclayer 'nope'" in m]
    assert len(unknown) == 1 and "layers of the train net: a, b, c, d, in" in unknown[0], msgs


# ------------------------------------------------------------------ BPTT ---
class Recorder:
    """A ParamChannel that records the updates it gets."""

    def __init__(self):
        self.updates: list[tuple[str, np.ndarray]] = []

    def put(self, p):
        pass

    def update(self, step, p):
        self.updates.append((p.name, p.grad.copy()))

    def collect(self, p):
        pass

    def state(self):
        return {}

    def load_state(self, state):
        pass


GRU_PARAMS = ["z_hx", "r_hx", "c_hx", "z_hh", "r_hh", "c_hh", "z_b", "r_b", "c_b"]


def rnn_net(tmp_path, steps: int = 5) -> NeuralNet:
    vocab = "abcdefgh"
    rng = np.random.default_rng(0)
    (tmp_path / "v.txt").write_text(vocab)
    (tmp_path / "t.txt").write_text("".join(rng.choice(list(vocab), 200)))
    gparams = " ".join(f'param {{ name: "{n}" }}' for n in GRU_PARAMS)
    text = f'''
      unroll_len: {steps}
      layer {{ name: "data" type: kCharRNN unroll_len: 1
               char_rnn_conf {{ path: "{tmp_path / 't.txt'}" vocab_path: "{tmp_path / 'v.txt'}"
                               batchsize: 3 unroll_len: {steps} }} }}
      layer {{ name: "emb" type: kEmbedding srclayers: "data" unroll_conn_type: kUnrollOneToAll
               embedding_conf {{ vocab_size: 8 feature_dim: 4 }} param {{ name: "e" }} }}
      layer {{ name: "label" type: kRNNLabel srclayers: "data" unroll_conn_type: kUnrollOneToAll }}
      layer {{ name: "gru" type: kGRU srclayers: "emb" gru_conf {{ dim_hidden: 6 }} {gparams} }}
      layer {{ name: "ip" type: kInnerProduct srclayers: "gru" innerproduct_conf {{ num_output: 8 }}
               param {{ name: "w" }} param {{ name: "b" }} }}
      layer {{ name: "loss" type: kSoftmaxLoss srclayers: "ip" srclayers: "label" }}'''
    net = build(text)
    prng = np.random.default_rng(1)
    for p in net.params:
        if p.owner is None:
            p.data[...] = prng.standard_normal(p.shape).astype(np.float32) * 0.5
    return net


def total_loss(net: NeuralNet) -> float:
    net.layer("0#data").load_state({"offset": 0})  # the same batch every time
    for layer in net.layers:
        layer.compute_feature(TRAIN | job_pb2.kForward, net.srclayers(layer))
    return sum(l.last_loss for l in net.copies("loss"))  # type: ignore[attr-defined]  # loss layers


def test_bptt_gradient_through_a_gru_unrolled_over_5_steps(tmp_path):
    net = rnn_net(tmp_path, steps=5)
    assert len(net.copies("gru")) == 5 and srcs_of(net, "4#gru") == ["4#emb", "3#gru"]
    channel = Recorder()
    worker = BPTTWorker(job_pb2.JobProto(seed=1), channel, log=lambda line: None)
    net.layer("0#data").load_state({"offset": 0})
    worker.forward(0, TRAIN, net)
    worker.backward(0, net)
    analytic = dict(channel.updates)
    heads = [p for p in net.params if p.owner is None]
    # one update per head param (copy 0's), none for the copies
    assert sorted(analytic) == sorted(p.name for p in heads) and len(channel.updates) == 12
    eps, rng = 1e-2, np.random.default_rng(2)
    for p in heads:
        flat = p.data.reshape(-1)
        picks = rng.choice(flat.size, size=min(flat.size, 10), replace=False)
        for j in picks:
            old = flat[j]
            flat[j] = old + eps
            up = total_loss(net)
            flat[j] = old - eps
            down = total_loss(net)
            flat[j] = old
            num = (up - down) / (2 * eps)
            got = analytic[p.name].reshape(-1)[j]
            assert abs(got - num) <= 1e-3 + 2e-2 * abs(num), (p.name, j, got, num)


def test_bptt_zeroes_the_shared_gradients_each_batch(tmp_path):
    net = rnn_net(tmp_path, steps=3)
    channel = Recorder()
    worker = BPTTWorker(job_pb2.JobProto(seed=1), channel, log=lambda line: None)
    for _ in range(2):
        net.layer("0#data").load_state({"offset": 0})
        worker.train_one_batch(0, net)
    first, second = channel.updates[:12], channel.updates[12:]
    assert [n for n, _ in first] == [n for n, _ in second]
    for (name, a), (_, b) in zip(first, second):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)


def test_bptt_display_sums_the_unrolled_loss_layers(tmp_path):
    net = rnn_net(tmp_path, steps=4)
    lines: list[str] = []
    worker = BPTTWorker(job_pb2.JobProto(seed=1), Recorder(), log=lines.append)
    worker.train_one_batch(0, net)
    per_copy = [l.metrics() for l in net.copies("loss")]
    rec = worker._report("Train @ step 0", 0, "train", net)
    loss = sum(m["loss"] for m in per_copy)
    assert rec["loss"] == pytest.approx(loss) and rec["loss_per_step"] == pytest.approx(loss / 4)
    assert rec["unrolled_loss_layers"] == 4
    shown = dict(parse_metrics(lines[0].split("  ")[1]))
    assert lines[0].startswith("Train @ step 0  Loss = ")
    assert shown["Loss"] == pytest.approx(loss, abs=1e-5)
    assert "(sum over 4 unrolled loss layers; per layer: Loss = " in lines[0]
    # metrics are reset after a display
    assert all(l.metrics()["loss"] == 0 for l in net.copies("loss"))


def test_sampling_with_an_unknown_dynamic_srclayer_is_named(tmp_path):
    from runtime.errors import UserError

    net = build('layer { name: "d" type: kRNNDummy rnn_dummy_conf { shape: 2 low: 0 high: 3 '
                'integer: true dynamic_srclayer: "nope" } }')
    worker = BPTTWorker(job_pb2.JobProto(seed=1), Recorder(), log=lambda line: None)
    worker.test_one_batch(0, job_pb2.kTest, net)  # the first batch generates its input
    with pytest.raises(UserError, match="layer 'd': rnn_dummy_conf.dynamic_srclayer 'nope' is not"):
        worker.test_one_batch(0, job_pb2.kTest, net)
