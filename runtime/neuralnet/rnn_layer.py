"""Layers of recurrent nets: GRU, and the two ways characters or words enter
one, OneHot and Embedding.

They work on one time step: a recurrent net is unrolled by the builder into
`unroll_len` copies of each layer (`net.py`), copy i reading the input of
step i. A source that holds the inputs of every step (CharRNN, with
`unroll_conn_type: kUnrollOneToAll`) gives them by position with
`data_at(i)`; any other source gives its `data_for(dst)`.

Gradients of params honour `kAggGrad` (BPTT): the unrolled copies share
copy 0's gradient arrays and add their part to them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from conf import job_pb2
from runtime import blas
from runtime.errors import LayerError, UserError
from runtime.neuralnet.conf_check import ConfProblem, conf_missing, positive
from runtime.neuralnet.layer import Layer, allocated, has, kOneToAll, kOneToMany, layer_registry
from runtime.neuralnet.neuron_layer import (
    F32,
    NeuronLayer,
    Scratch,
    _sigmoid_f,
    as_f32,
    check_param_count,
    positive_field,
    set_param_grad,
    type_name,
    wants_grad,
)


# ---------------------------------------------------------------- helpers --
def step_input(layer: Layer, src: Layer) -> np.ndarray:
    """What `layer` reads from `src` at its time step: `src.data_at(i)` for
    a source holding every step's input (i = the layer's unroll_index),
    else `src.data_for(layer)`."""
    data_at = getattr(src, "data_at", None)
    if data_at is not None:
        return data_at(layer.proto.unroll_index)
    return src.data_for(layer)


def check_step_input(layer: Layer, src: Layer) -> tuple[int, ...]:
    """The shape `layer` reads from `src` (see `step_input`); a source with
    fewer steps than the layer's unroll_index is a LayerError."""
    steps = getattr(src, "num_steps", None)
    k = layer.proto.unroll_index
    if steps is not None and k >= steps:
        raise LayerError(f"unrolled copy {k} reads step {k} of '{src.name}', which holds "
                         f"{steps} steps; make its unroll_len (e.g. char_rnn_conf.unroll_len) "
                         "at least the net's unroll_len")
    return tuple(src.shape_for(layer))


def indices_of(layer: Layer, src: Layer, size: int, what: str) -> np.ndarray:
    """The int indices `layer` reads from `src` at its step, one per
    instance, checked to be in [0, size)."""
    x = np.asarray(step_input(layer, src))
    idx = x.reshape(x.shape[0], -1)[:, 0] if x.ndim > 1 else x.reshape(-1)
    idx = idx.astype(np.int64)
    bad = (idx < 0) | (idx >= size)
    if bad.any():
        k = int(np.argmax(bad))
        raise UserError(f"layer '{layer.name}': index {idx[k]} of instance {k} (from "
                        f"'{src.name}') is outside [0, {size}), the {what}")
    return idx


def _gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, acc: bool,
          trans_a: bool = False, trans_b: bool = False) -> None:
    """c = op(a) @ op(b), or c += ... when `acc` (GEMM's beta)."""
    blas.sgemm(a, b, c, beta=1.0 if acc else 0.0, trans_a=trans_a, trans_b=trans_b)


# -------------------------------------------------------------------- GRU --
@layer_registry.register(job_pb2.kGRU)
class GRULayer(NeuronLayer):
    """A gated recurrent unit, one time step, as SINGA's GRULayer:

        z  = sigmoid(x W_z^T + h U_z^T + b_z)
        r  = sigmoid(x W_r^T + h U_r^T + b_r)
        c  = tanh(r * (h U_c^T) + x W_c^T + b_c)
        h' = z * (h - c) + c

    srclayers = {input x [batch, ...] (flattened), previous GRU h [batch,
    dim_hidden]}; without the second (copy 0 of an unrolled GRU) h is zero.
    Params, by position: z_hx, r_hx, c_hx `[dim_hidden, in_dim]`, z_hh,
    r_hh, c_hh `[dim_hidden, dim_hidden]`, then with 9 params the biases z_b,
    r_b, c_b `[dim_hidden]` (6 params: no bias; SINGA decides by the count).

    The output goes to the layer above and to the next copy, so gradients
    from both consumers add up (`set_grad`). The gradient handed to the
    previous GRU is the exact dL/dh; SINGA v0.3 adds z instead of g * z to it
    (a bug this layer does not copy).
    """

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return (conf_missing(proto, "gru_conf", "dim_hidden: N")
                or positive(proto, "gru_conf", "dim_hidden"))


    num_params = (6, 9)
    dst_layer_connection = kOneToMany
    src_neuron_connection = kOneToAll
    recurrent = True
    takes_previous_copy = True

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, (1, 2))
        conf = self.proto.gru_conf
        self.hdim = positive_field(self, conf, "gru_conf", "dim_hidden")
        n = check_param_count(self, (6, 9), "z_hx, r_hx, c_hx, z_hh, r_hh, c_hh[, z_b, r_b, c_b]")
        if conf.HasField("bias_term") and conf.bias_term != (n == 9):
            raise LayerError(f"gru_conf.bias_term is {str(conf.bias_term).lower()} but "
                             f"{n} params are given; with bias the GRU takes 9 params "
                             "(..., z_b, r_b, c_b), without it 6")
        src_shape = tuple(srclayers[0].shape_for(self))
        if len(src_shape) < 2:
            raise LayerError(f"{type_name(self)}: the input '{srclayers[0].name}' has shape "
                             f"{list(src_shape)}; expected [batch, features...]")
        self.batch = src_shape[0]
        self.vdim = int(np.prod(src_shape[1:], dtype=np.int64))
        if len(srclayers) == 2:
            ctx = tuple(srclayers[1].shape_for(self))
            if ctx != (self.batch, self.hdim):
                raise LayerError(f"{type_name(self)}: the previous state '{srclayers[1].name}' "
                                 f"has shape {list(ctx)}; expected [{self.batch}, {self.hdim}]")
        h, v = self.hdim, self.vdim
        self.w_x = [self.make_param(k, (h, v)) for k in range(3)]      # z, r, c
        self.w_h = [self.make_param(k, (h, h)) for k in range(3, 6)]   # z, r, c
        self.b = [self.make_param(k, (h,)) for k in range(6, 9)] if n == 9 else None
        self.shape = (self.batch, self.hdim)
        self._h: np.ndarray | None = None

    def set_grad(self, dst: Layer, grad: np.ndarray) -> None:
        """Gradients from the layer above and from the next copy add up; the
        first one of a backward pass (self.grad is None) is copied in."""
        buf = self.buf.get("g", self.shape)
        if self.grad is None:
            np.copyto(buf, grad.reshape(self.shape))
            self.grad = buf
        elif self.grad is buf:
            buf += grad.reshape(self.shape)
        else:
            self.grad = self.grad.reshape(self.shape) + grad.reshape(self.shape)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        b, hd = self.batch, self.hdim
        x = as_f32(srclayers[0].data_for(self)).reshape(b, self.vdim)
        h = None
        out = self.buf.get("out", (b, hd))
        if len(srclayers) > 1:
            h = as_f32(srclayers[1].data_for(self)).reshape(b, hd)
            if np.shares_memory(h, out):
                # the state fed back from this layer's own last output (sampling)
                h = h.copy()
        wz, wr, wc = (allocated(p.data) for p in self.w_x)
        uz, ur, uc = (allocated(p.data) for p in self.w_h)
        z = self.buf.get("z", (b, hd))
        r = self.buf.get("r", (b, hd))
        c = self.buf.get("c", (b, hd))
        hu = self.buf.get("hu", (b, hd))
        _gemm(x, wz, z, False, trans_b=True)
        _gemm(x, wr, r, False, trans_b=True)
        _gemm(x, wc, c, False, trans_b=True)
        if self.b is not None:
            z += self.b[0].data
            r += self.b[1].data
            c += self.b[2].data
        if h is not None:
            _gemm(h, uz, z, True, trans_b=True)
            _gemm(h, ur, r, True, trans_b=True)
            _gemm(h, uc, hu, False, trans_b=True)
        _sigmoid_f(z, z)
        _sigmoid_f(r, r)
        if h is not None:
            c += r * hu
        np.tanh(c, out=c)
        if h is None:
            np.subtract(1, z, out=out)  # z * (0 - c) + c
            out *= c
        else:
            np.subtract(h, c, out=out)
            out *= z
            out += c
        self._x, self._h = x, h
        self.data = out

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        b, hd = self.batch, self.hdim
        acc = has(flag, job_pb2.kAggGrad)
        g = as_f32(self.grad).reshape(b, hd)
        x, h = self._x, self._h
        z, r, c = self.buf.get("z", (b, hd)), self.buf.get("r", (b, hd)), self.buf.get("c", (b, hd))
        # pre-activation gradients of z, c and r
        dz = self.buf.get("dz", (b, hd))
        if h is not None:
            np.subtract(h, c, out=dz)
        else:
            np.negative(c, out=dz)
        dz *= g
        dz *= z
        dz *= 1 - z
        dc = self.buf.get("dc", (b, hd))
        np.subtract(1, z, out=dc)
        dc *= g
        dc *= 1 - c * c
        drc: np.ndarray | None
        dr: np.ndarray | None
        if h is not None:
            drc = self.buf.get("drc", (b, hd))  # dL/d(h U_c^T)
            np.multiply(dc, r, out=drc)
            dr = self.buf.get("dr", (b, hd))
            np.multiply(dc, self.buf.get("hu", (b, hd)), out=dr)
            dr *= r
            dr *= 1 - r
        else:
            drc = dr = None  # with a zero state, r and U have no effect
        # param gradients
        for p, d, a in ((self.w_x[0], dz, x), (self.w_x[1], dr, x), (self.w_x[2], dc, x),
                        (self.w_h[0], dz, h), (self.w_h[1], dr, h), (self.w_h[2], drc, h)):
            if d is None or a is None:
                if not acc:
                    allocated(p.grad).fill(0)
            else:
                _gemm(d, a, allocated(p.grad), acc, trans_a=True)
        if self.b is not None:
            set_param_grad(self.b[0], dz.sum(axis=0), flag)
            set_param_grad(self.b[1], dr.sum(axis=0) if dr is not None
                           else np.zeros(hd, F32), flag)
            set_param_grad(self.b[2], dc.sum(axis=0), flag)
        # the input's gradient
        src = srclayers[0]
        if wants_grad(src):
            gx = self.buf.get("gx", (b, self.vdim))
            _gemm(dz, allocated(self.w_x[0].data), gx, False)
            _gemm(dc, allocated(self.w_x[2].data), gx, True)
            if dr is not None:
                _gemm(dr, allocated(self.w_x[1].data), gx, True)
            src.set_grad(self, gx.reshape(src.shape_for(self)))
        # the previous state's gradient
        if h is not None and len(srclayers) > 1 and wants_grad(srclayers[1]) \
                and srclayers[1] is not self:
            gh = self.buf.get("gh", (b, hd))
            np.multiply(g, z, out=gh)
            assert dr is not None and drc is not None  # made above, as h is not None
            _gemm(dz, allocated(self.w_h[0].data), gh, True)
            _gemm(dr, allocated(self.w_h[1].data), gh, True)
            _gemm(drc, allocated(self.w_h[2].data), gh, True)
            srclayers[1].set_grad(self, gh)


# ----------------------------------------------------------------- OneHot --
@layer_registry.register(job_pb2.kOneHot)
class OneHotLayer(Layer):
    """Indices -> one-hot rows: data[b, idx_b] = 1, shape [batch,
    onehot_conf.vocab_size]. Copy i of an unrolled OneHot reads step i of a
    multi-step source (`data_at`), e.g. CharRNN. It has no gradient: an
    index is not differentiable (the layers above get none from it)."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return (conf_missing(proto, "onehot_conf", "vocab_size: N")
                or positive(proto, "onehot_conf", "vocab_size"))


    is_input = True  # nothing flows back through an index
    dst_layer_connection = kOneToMany

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        size = self.proto.onehot_conf.vocab_size
        if size <= 0:
            raise LayerError(f"onehot_conf.vocab_size must be > 0, got {size}")
        self.vocab_size = size
        shape = check_step_input(self, srclayers[0])
        self.batch = shape[0]
        self.shape = (self.batch, size)
        self.buf = Scratch()

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        idx = indices_of(self, srclayers[0], self.vocab_size, "onehot_conf.vocab_size")
        out = self.buf.zeros("y", self.shape)
        out[np.arange(idx.shape[0]), idx] = 1
        self.data = out

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        """An index has no gradient."""


# -------------------------------------------------------------- Embedding --
@layer_registry.register(job_pb2.kEmbedding)
class EmbeddingLayer(NeuronLayer):
    """Indices -> rows of W `[vocab_size, feature_dim]` (one param):
    data[b] = W[idx_b], shape [batch, feature_dim]. Copy i of an unrolled
    Embedding reads step i of a multi-step source (`data_at`). The gradient
    of W is a scatter-add of the output's gradient over the indices (added
    to the existing one with kAggGrad); the indices get none."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return (conf_missing(proto, "embedding_conf", "vocab_size: N feature_dim: D")
                or positive(proto, "embedding_conf", "vocab_size")
                + positive(proto, "embedding_conf", "feature_dim"))


    num_params = 1

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        conf = self.proto.embedding_conf
        self.vocab_size = positive_field(self, conf, "embedding_conf", "vocab_size")
        self.feature_dim = conf.feature_dim
        if self.feature_dim <= 0:
            raise LayerError(f"embedding_conf.feature_dim must be > 0, got {self.feature_dim}")
        check_param_count(self, (1,), "the embedding matrix")
        shape = check_step_input(self, srclayers[0])
        self.batch = shape[0]
        self.weight = self.make_param(0, (self.vocab_size, self.feature_dim))
        self.shape = (self.batch, self.feature_dim)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        self._idx = indices_of(self, srclayers[0], self.vocab_size, "embedding_conf.vocab_size")
        out = self.buf.get("y", self.shape)
        np.take(allocated(self.weight.data), self._idx, axis=0, out=out)
        self.data = out

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        g = as_f32(self.grad).reshape(self.shape)
        p = self.weight
        if p.grad is None:
            p.grad = np.zeros(p.shape, dtype=F32)
        if not has(flag, job_pb2.kAggGrad):
            p.grad.fill(0)
        np.add.at(p.grad, self._idx, g)
