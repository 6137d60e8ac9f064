"""RBM layers: kRBMVis and kRBMHid, the two halves of a Restricted Boltzmann
Machine trained by contrastive divergence (`runtime.train.algorithms.cd`).

An RBM is written as two layers joined both ways, as in SINGA:

    layer { name: "RBMVis" type: kRBMVis srclayers: "data" srclayers: "RBMHid"
            rbm_conf { hdim: 1000 }
            param { name: "w1" init {...} }          # W [hdim, vdim]
            param { name: "b11" init {...} } }       # visible bias [vdim]
    layer { name: "RBMHid" type: kRBMHid srclayers: "RBMVis"
            rbm_conf { hdim: 1000 }
            param { name: "w1_" share_from: "w1" }   # the same W
            param { name: "b12" init {...} } }       # hidden bias [hdim]

Visible units are Bernoulli (probabilities in [0, 1]); hidden units are
Bernoulli, or Gaussian with unit variance when `rbm_conf.gaussian` is true
(their mean is linear, a sample is mean + N(0, 1)).

Each layer keeps a positive and a negative phase (SINGA's `pos_data_`,
`neg_data_`), chosen by the flag:
- kPositive (or a flag with neither phase bit): the vis copies its input
  (flattened to [batch, vdim]); the hid computes p(h | v_pos).
- kNegative: the vis computes v_neg = sigmoid(h_sample W + b_vis) from a
  sample of the hid; the hid computes p(h | v_neg) from the vis's
  *probabilities* (the visible units are not sampled, as in Hinton and
  Salakhutdinov's code). The hid's sample comes from its positive
  probabilities on the first Gibbs step after a positive phase, from its
  negative ones after that.

Gradients (SINGA's sign: the updater subtracts them, which raises the
likelihood), over a batch of B instances, with h_* the hid's probabilities:
    vis:  gW = (h_neg^T v_neg - h_pos^T v_pos) / B,  gb_vis = sum(v_neg - v_pos) / B
    hid:  gb_hid = sum(h_neg - h_pos) / B
i.e. the gradient of mean F(v_pos) - mean F(v_neg) (F: the free energy),
with v_neg held fixed. The hid does not compute a W gradient: its W must
share the vis's (`share_from`), and that param is marked not `trainable`
so that the W update is applied once, from the vis's gradient.
No gradient goes to the layers below: they are a fixed feature extractor.

Reconstruction error (the display and test metric, "Squared Error = x"):
on a negative pass whose flag has kTest (CD's first Gibbs step, and the test
pass) the vis adds sum((v_pos - v_neg)^2) / B, the squared error per instance
summed over the visible units (SINGA's formula), with v_neg reconstructed
from a *sample* of the hidden units. `metrics()` averages it over the batches
that recorded one since the last reset. (SINGA divides by the number of all
ComputeFeature calls of the vis, positive ones included, which shows half
the per-batch error under CD-1; here it is the plain average per batch.)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.conf_check import ConfProblem, conf_missing, positive
from runtime.neuralnet.layer import Layer, allocated, has, kOneToAll, kOneToMany, layer_registry
from runtime.neuralnet.neuron_layer import (
    ACTIVATIONS,
    Scratch,
    as_f32,
    check_param_count,
    matmul_param_grad,
    positive_field,
    set_param_grad,
    type_name,
)

F32 = np.float32
_sigmoid = ACTIVATIONS["SIGMOID"][0]


def is_negative(flag: int) -> bool:
    """Whether `flag` asks for the negative phase (a flag without it is positive)."""
    return has(flag, job_pb2.kNegative) and not has(flag, job_pb2.kPositive)


class RBMLayer(Layer):
    """What the vis and hid share: rbm_conf, the two phases, sampling."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return conf_missing(proto, "rbm_conf", "hdim: N") or positive(proto, "rbm_conf", "hdim")


    num_params = 2
    # each consumer reads the phase it wants itself: never a split layer
    dst_layer_connection = kOneToMany
    src_neuron_connection = kOneToAll

    def __init__(self, proto: job_pb2.LayerProto):
        super().__init__(proto)
        self.buf = Scratch()
        self.hdim = 0
        self.gaussian = False
        self.batch = 0
        self.pos_data: np.ndarray | None = None
        self.neg_data: np.ndarray | None = None
        # True from a positive pass until the first negative pass of this layer
        self.first_gibbs = True

    def setup_conf(self) -> None:
        conf = self.proto.rbm_conf
        self.hdim = positive_field(self, conf, "rbm_conf", "hdim")
        self.gaussian = bool(conf.gaussian)
        check_param_count(self, (2,), "weight, bias")


@layer_registry.register(job_pb2.kRBMVis)
class RBMVisLayer(RBMLayer):
    """The visible half: srclayers = {input layer, its kRBMHid} (either order).

    Params: W `[hdim, vdim]`, b_vis `[vdim]`. Output shape `[batch, vdim]`
    (`data` is the positive phase, the input). See the module doc.
    """

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 2)
        self.setup_conf()
        hids = [s for s in srclayers if isinstance(s, RBMHidLayer)]
        if len(hids) != 1:
            raise LayerError(
                f"a kRBMVis layer takes its input layer and its kRBMHid layer as srclayers, "
                f"got {', '.join(f'{s.name!r} ({type_name(s)})' for s in srclayers)}")
        self.hid_layer = hids[0]
        self.input_index = 0 if srclayers[0] is not self.hid_layer else 1
        src_shape = tuple(srclayers[self.input_index].shape_for(self))
        if len(src_shape) < 1 or src_shape[0] <= 0:
            raise LayerError(f"kRBMVis: source shape {list(src_shape)} has no batch dimension")
        self.batch = src_shape[0]
        self.vdim = int(np.prod(src_shape[1:], dtype=np.int64))
        self.shape = (self.batch, self.vdim)
        self.weight = self.make_param(0, (self.hdim, self.vdim))
        self.bias = self.make_param(1, (self.vdim,))
        self.reset_metrics()

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if not is_negative(flag):
            x = as_f32(srclayers[self.input_index].data_for(self)).reshape(self.shape)
            self.pos_data = self.buf.get("pos", self.shape)
            np.copyto(self.pos_data, x)
            self.data = self.pos_data
            self.first_gibbs = True
            return
        if self.pos_data is None:
            raise LayerError(f"kRBMVis '{self.name}': a negative pass before a positive pass")
        h = self.hid_layer.sample(flag)
        v = self.buf.get("neg", self.shape)
        np.matmul(h, allocated(self.weight.data), out=v)
        v += self.bias.data
        _sigmoid(v, v)
        self.neg_data = v
        if has(flag, job_pb2.kTest):
            d = self.buf.get("diff", self.shape)
            np.subtract(self.pos_data, v, out=d)
            # float64 sum: 784k float32 squares lose digits in a float32 total
            self._err_sum += float(np.dot(d.reshape(-1).astype(np.float64),
                                          d.reshape(-1).astype(np.float64))) / self.batch
            self._err_count += 1
        self.first_gibbs = False

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        hid = self.hid_layer
        if self.neg_data is None or hid.neg_data is None:
            raise LayerError(f"kRBMVis '{self.name}': the gradient needs a negative pass first")
        B = self.batch
        # one product over [neg; pos] stacked along the batch: gW = H^T V with
        # H = [h_neg; h_pos] and V = [v_neg; -v_pos] / B
        H = self.buf.get("H", (2 * B, self.hdim))
        V = self.buf.get("V", (2 * B, self.vdim))
        H[:B], H[B:] = hid.neg_data, hid.pos_data
        np.multiply(self.neg_data, F32(1.0 / B), out=V[:B])
        np.multiply(allocated(self.pos_data), F32(-1.0 / B), out=V[B:])
        matmul_param_grad(self.weight, H.T, V, flag)
        set_param_grad(self.bias, V.sum(axis=0, dtype=np.float64).astype(F32), flag)

    # --- metrics ----------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """The mean squared reconstruction error per instance over the batches
        recorded since the last reset; {} if none was."""
        if not self._err_count:
            return {}
        return {"squared_error": self._err_sum / self._err_count}

    def reset_metrics(self) -> None:
        self._err_sum = 0.0
        self._err_count = 0

    def display(self) -> str:
        return "Squared Error = %f" % self.metrics().get("squared_error", 0.0)


@layer_registry.register(job_pb2.kRBMHid)
class RBMHidLayer(RBMLayer):
    """The hidden half: srclayers = {its kRBMVis}.

    Params: W `[hdim, vdim]`, which must `share_from` the vis's W, and b_hid
    `[hdim]`. Output shape `[batch, hdim]` (`data` is the positive phase's
    probabilities, or means if gaussian). See the module doc.
    """

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        self.setup_conf()
        vis = srclayers[0]
        if not isinstance(vis, RBMVisLayer):
            raise LayerError(f"a kRBMHid layer takes its kRBMVis layer as its srclayer, got "
                             f"{vis.name!r} ({type_name(vis)})")
        if vis.hdim != self.hdim:
            raise LayerError(f"rbm_conf.hdim is {self.hdim} but its kRBMVis '{vis.name}' has "
                             f"hdim {vis.hdim}; the two halves of an RBM must agree")
        self.vis_layer = vis
        self.batch, self.vdim = vis.batch, vis.vdim
        self.shape = (self.batch, self.hdim)
        wname = vis.weight.name
        share = self.proto.param[0].share_from
        if share != wname:
            raise LayerError(
                f"param '{self.proto.param[0].name}' (the weight, position 1) must "
                f"share_from \"{wname}\", the weight of its kRBMVis '{vis.name}' (an RBM has "
                f"one weight matrix), got " + (f"share_from \"{share}\"" if share else
                                               "no share_from"))
        self.weight = self.make_param(0, (self.hdim, self.vdim))
        # the W gradient comes from the vis layer alone
        self.weight.trainable = False
        self.bias = self.make_param(1, (self.hdim,))

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        vis = self.vis_layer
        if not is_negative(flag):
            src, name, self.first_gibbs = vis.pos_data, "pos", True
        else:
            src, name, self.first_gibbs = vis.neg_data, "neg", False
        if src is None:
            raise LayerError(f"kRBMHid '{self.name}': its kRBMVis '{vis.name}' has no data "
                             "for this phase yet")
        h = self.buf.get(name, self.shape)
        np.matmul(src, allocated(self.weight.data).T, out=h)
        h += self.bias.data
        if not self.gaussian:
            _sigmoid(h, h)
        if name == "pos":
            self.pos_data = self.data = h
        else:
            self.neg_data = h

    def sample(self, flag: int) -> np.ndarray:
        """A sample of the hidden units: Bernoulli(p), or mean + N(0, 1) if
        gaussian; from the positive phase when `flag` is positive or on the
        first Gibbs step, else from the negative phase. Draws from `self.rng`."""
        positive = not is_negative(flag) or self.first_gibbs
        p = self.pos_data if positive else self.neg_data
        if p is None:
            raise LayerError(f"kRBMHid '{self.name}': nothing to sample before a positive pass")
        s = self.buf.get("pos_sample" if positive else "neg_sample", self.shape)
        if self.gaussian:
            s[...] = self.rng.standard_normal(self.shape, dtype=F32)
            s += p
        else:
            self.rng.random(out=s, dtype=F32)
            np.less(s, p, out=s)  # 1.0 where u < p
        return s

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if self.pos_data is None or self.neg_data is None:
            raise LayerError(f"kRBMHid '{self.name}': the gradient needs both phases first")
        g = self.neg_data.sum(axis=0, dtype=np.float64) - self.pos_data.sum(axis=0, dtype=np.float64)
        set_param_grad(self.bias, (g / self.batch).astype(F32), flag)
