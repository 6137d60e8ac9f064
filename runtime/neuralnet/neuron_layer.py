"""Neuron layers that work on a flat feature vector per instance: InnerProduct,
the activations (ReLU, Sigmoid, STanh, Activation) and Dropout; plus the small
helpers every neuron-layer module shares (param counts, feature partitioning,
param-grad writing with `kAggGrad`, reusable scratch arrays).

Buffers: a layer's `data` and the gradient it hands to its source are arrays
the layer owns and overwrites on its next `compute_feature` /
`compute_gradient` call (as SINGA's blobs are). A consumer that keeps one
beyond the current step (or sends it asynchronously) must copy it first.
Allocating fresh arrays every step costs page faults that cost more than the
arithmetic of a small convnet.

Gradients are not computed for, or handed to, input layers (`is_input`):
they have no gradient (see `layer.py`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.model.param import Param
from runtime.neuralnet.conf_check import ConfProblem, conf_missing, positive
from runtime.neuralnet.layer import Layer, allocated, has, kOneToAll, layer_registry

F32 = np.float32


# --------------------------------------------------------------- helpers --
def type_name(layer: Layer) -> str:
    """The layer's type as the user wrote it (`kInnerProduct`, or the user_type)."""
    return layer.proto.user_type or job_pb2.LayerType.Name(layer.proto.type)


def check_param_count(layer: Layer, allowed: Sequence[int], what: str) -> int:
    """Raise unless the proto has one of `allowed` param entries; return the count.

    `what` names the params in order, e.g. "weight, bias".
    """
    n = len(layer.proto.param)
    if n not in allowed:
        want = " or ".join(str(a) for a in allowed)
        raise LayerError(
            f"a {type_name(layer)} layer takes {want} params ({what}), got {n}"
            + (f" ({', '.join(repr(p.name) for p in layer.proto.param)})" if n else ""))
    return n


def feature_partitions(layer: Layer) -> int:
    """How many parts the layer's neurons are split into (partition_dim 1), else 1."""
    p = layer.proto
    return p.num_partitions if p.partition_dim == 1 and p.num_partitions > 1 else 1


def partitioned(layer: Layer, value: int, field: str) -> int:
    """`value` divided by the feature partitions; it must divide evenly."""
    n = feature_partitions(layer)
    if value % n:
        raise LayerError(
            f"{type_name(layer)}: {field} {value} cannot be split over "
            f"num_partitions {n} (partition_dim 1); make it a multiple of {n}")
    return value // n


def positive_field(layer: Layer, conf, conf_name: str, field: str) -> int:
    """The value of a required positive integer field of a layer conf."""
    if not conf.HasField(field):
        raise LayerError(f"{type_name(layer)}: {conf_name}.{field} is required")
    value = getattr(conf, field)
    if value <= 0:
        raise LayerError(f"{type_name(layer)}: {conf_name}.{field} must be > 0, got {value}")
    return value


def set_param_grad(param: Param, value: np.ndarray, flag: int) -> None:
    """Store `value` as `param.grad`, or add it when `flag` has kAggGrad (BPTT)."""
    if param.grad is None:
        param.grad = np.zeros(param.shape, dtype=F32)
    if has(flag, job_pb2.kAggGrad):
        param.grad += value.reshape(param.shape)
    else:
        np.copyto(param.grad, value.reshape(param.shape))


def matmul_param_grad(param: Param, a: np.ndarray, b: np.ndarray, flag: int) -> None:
    """`set_param_grad(param, a @ b, flag)`, written straight into the grad when it can."""
    if (param.grad is not None and not has(flag, job_pb2.kAggGrad)
            and param.grad.shape == (a.shape[0], b.shape[1])):
        np.matmul(a, b, out=param.grad)
    else:
        set_param_grad(param, a @ b, flag)


def wants_grad(src: Layer) -> bool:
    """Input layers have no gradient; skip computing theirs."""
    return not getattr(src, "is_input", False)


def as_f32(x: np.ndarray | None) -> np.ndarray:
    """`x` as float32; `x` is a layer's data or grad, set before it is read
    (None failed here before too, on `.dtype`)."""
    assert x is not None, "an array is read before it is set"
    return x if x.dtype == F32 else x.astype(F32)


class Scratch:
    """Arrays a layer reuses across calls, keyed by name; re-made when the shape changes."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: Sequence[int], dtype=F32,
            fill: float | None = None) -> np.ndarray:
        """The array `name` of `shape`; `fill` is applied only when it is (re)made."""
        shape = tuple(int(d) for d in shape)
        a = self._arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = np.empty(shape, dtype=dtype)
            if fill is not None:
                a.fill(fill)
            self._arrays[name] = a
        return a

    def zeros(self, name: str, shape: Sequence[int], dtype=F32) -> np.ndarray:
        """The array `name`, zero-filled on every call."""
        a = self.get(name, shape, dtype)
        a.fill(0)
        return a


class NeuronLayer(Layer):
    """Base for the layers here: one source, scratch buffers."""

    def __init__(self, proto: job_pb2.LayerProto):
        super().__init__(proto)
        self.buf = Scratch()

    def src_data(self, srclayers: Sequence[Layer]) -> np.ndarray:
        return as_f32(srclayers[0].data_for(self))


# ---------------------------------------------------------- inner product --
@layer_registry.register(job_pb2.kInnerProduct)
class InnerProductLayer(NeuronLayer):
    """y = x W^T + b with x flattened to [batch, count/batch].

    Params: W `[num_output, in_dim]` (`[in_dim, num_output]` with `transpose:
    true`, as the autoencoder decoder that shares the encoder's W), b
    `[num_output]`. With partition_dim 1, num_output is divided by
    num_partitions. With kAggGrad in the flag, param grads are added to the
    existing ones (BPTT over unrolled copies).
    """

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return (conf_missing(proto, "innerproduct_conf", "num_output: N")
                or positive(proto, "innerproduct_conf", "num_output"))


    num_params = 2
    src_neuron_connection = kOneToAll

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        conf = self.proto.innerproduct_conf
        num_output = positive_field(self, conf, "innerproduct_conf", "num_output")
        self.num_output = partitioned(self, num_output, "innerproduct_conf.num_output")
        self.transpose = conf.transpose
        src_shape = tuple(srclayers[0].shape_for(self))
        if len(src_shape) < 1 or src_shape[0] <= 0:
            raise LayerError(f"{type_name(self)}: source shape {src_shape} has no batch dimension")
        self.batch = src_shape[0]
        self.in_dim = int(np.prod(src_shape[1:], dtype=np.int64))
        check_param_count(self, (2,), "weight, bias")
        wshape = (self.num_output, self.in_dim)
        if self.transpose:
            wshape = wshape[::-1]
        self.weight = self.make_param(0, wshape)
        self.bias = self.make_param(1, (self.num_output,))
        self.shape = (self.batch, self.num_output)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self.src_data(srclayers).reshape(self.batch, self.in_dim)
        w = allocated(self.weight.data)
        # y.T = W x.T: OpenBLAS is 10-20% faster at this orientation of these
        # products (the batch as the short side), and the transpose comes free
        # with the bias add
        yt = self.buf.get("yt", self.shape[::-1])
        np.matmul(w.T if self.transpose else w, x.T, out=yt)
        y = self.buf.get("y", self.shape)
        np.add(yt.T, allocated(self.bias.data), out=y)
        self.data = y

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        x = self.src_data(srclayers).reshape(self.batch, self.in_dim)
        g = as_f32(self.grad).reshape(self.shape)
        w = allocated(self.weight.data)
        if self.transpose:
            matmul_param_grad(self.weight, x.T, g, flag)
        else:
            matmul_param_grad(self.weight, g.T, x, flag)
        set_param_grad(self.bias, g.sum(axis=0), flag)
        if wants_grad(src):
            gx = self.buf.get("gx", (self.batch, self.in_dim))
            np.matmul(g, w.T if self.transpose else w, out=gx)
            src.set_grad(self, gx.reshape(src.shape_for(self)))


# ------------------------------------------------------------ activations --
# Each activation: forward(x, out) and deriv(y, out), the derivative dy/dx
# written in terms of the output y so that a layer can work in place.
STANH_A, STANH_B = 1.7159047, 0.6666667


def _relu_f(x, out):
    np.maximum(x, 0, out=out)


def _relu_d(y, out):
    np.greater(y, 0, out=out)


def _sigmoid_f(x, out):
    # 1/(1+exp(-x)) via tanh: no overflow warnings for large |x|
    np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5


def _sigmoid_d(y, out):
    np.subtract(1, y, out=out)
    out *= y


def _tanh_f(x, out):
    np.tanh(x, out=out)


def _tanh_d(y, out):
    np.multiply(y, y, out=out)
    np.subtract(1, out, out=out)


def _stanh_f(x, out):
    np.multiply(x, STANH_B, out=out)
    np.tanh(out, out=out)
    out *= STANH_A


def _stanh_d(y, out):
    # d/dx A tanh(Bx) = A B (1 - tanh^2) = B (A - y^2 / A)
    np.multiply(y, y, out=out)
    out *= -STANH_B / STANH_A
    out += STANH_A * STANH_B


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "RELU": (_relu_f, _relu_d),
    "SIGMOID": (_sigmoid_f, _sigmoid_d),
    "TANH": (_tanh_f, _tanh_d),
    "STANH": (_stanh_f, _stanh_d),
}


class ElementwiseLayer(NeuronLayer):
    """y = f(x) elementwise; the output has the source's shape.

    Subclasses set `activation` (a key of ACTIVATIONS) or override `kind()`.
    `share_src_blobs: true` works in place: the source's data array becomes
    this layer's output, and the gradient is computed in the array it came in.
    """

    activation = "RELU"

    def kind(self) -> str:
        return self.activation

    def setup(self, srclayers: Sequence[Layer]) -> None:
        super().setup(srclayers)
        self.forward, self.deriv = ACTIVATIONS[self.kind()]
        self.in_place = self.proto.share_src_blobs

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self.src_data(srclayers)
        y = x if self.in_place else self.buf.get("y", x.shape)
        self.forward(x, y)
        self.data = y

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        if not wants_grad(src):
            return
        g = as_f32(self.grad)
        d = self.buf.get("deriv", g.shape)
        self.deriv(self.data, d)
        gx = g if self.in_place and g.flags.writeable else self.buf.get("gx", g.shape)
        np.multiply(g, d, out=gx)
        src.set_grad(self, gx)


@layer_registry.register(job_pb2.kReLU)
class ReLULayer(ElementwiseLayer):
    """max(0, x), or negative_slope * x for x <= 0.

    `relu_conf.negative_slope` is honoured (SINGA v0.3 ignores it).
    """

    def setup(self, srclayers: Sequence[Layer]) -> None:
        super().setup(srclayers)
        self.slope = float(self.proto.relu_conf.negative_slope)
        self.in_place = False

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if self.slope == 0:
            return super().compute_feature(flag, srclayers)
        x = self.src_data(srclayers)
        y = self.buf.get("y", x.shape)
        np.multiply(x, np.where(x > 0, F32(1), F32(self.slope)), out=y)
        self.data = y

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        if not wants_grad(src):
            return
        if self.slope == 0:
            # g where y > 0: a bool mask is cheaper to make than a float one
            g = as_f32(self.grad)
            mask = self.buf.get("mask", g.shape, dtype=np.bool_)
            np.greater(allocated(self.data), 0, out=mask)
            gx = self.buf.get("gx", g.shape)
            np.multiply(g, mask, out=gx)
            src.set_grad(self, gx)
            return
        x = self.src_data(srclayers)
        gx = self.buf.get("gx", x.shape)
        np.multiply(allocated(self.grad), np.where(x > 0, F32(1), F32(self.slope)), out=gx)
        src.set_grad(self, gx)


@layer_registry.register(job_pb2.kSigmoid)
class SigmoidLayer(ElementwiseLayer):
    """1 / (1 + exp(-x))."""

    activation = "SIGMOID"


@layer_registry.register(job_pb2.kSTanh)
class STanhLayer(ElementwiseLayer):
    """1.7159047 * tanh(0.6666667 * x) (LeCun's scaled tanh)."""

    activation = "STANH"


@layer_registry.register(job_pb2.kActivation, job_pb2.kCudnnActivation)
class ActivationLayer(ElementwiseLayer):
    """`activation_conf.type`: RELU, SIGMOID, TANH or STANH (SINGA lacks STANH here)."""

    def kind(self) -> str:
        t = self.proto.activation_conf.type
        name = job_pb2.ActivationType.Name(t)
        if name not in ACTIVATIONS:
            raise LayerError(f"{type_name(self)}: activation_conf.type {name} is not "
                             f"supported; expected one of {', '.join(ACTIVATIONS)}")
        return name


# ---------------------------------------------------------------- dropout --
@layer_registry.register(job_pb2.kDropout)
class DropoutLayer(NeuronLayer):
    """Inverted dropout: in the train phase y = x * mask with mask =
    (U < 1-p) / (1-p), U drawn from `self.rng`; otherwise y = x (a copy)."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        r = proto.dropout_conf.dropout_ratio
        if not 0 <= r < 1:
            return [ConfProblem("dropout_conf.dropout_ratio",
                                f"dropout_conf.dropout_ratio must be in [0, 1), got {r:g}")]
        return []


    def setup(self, srclayers: Sequence[Layer]) -> None:
        super().setup(srclayers)
        self.raise_conf_errors()
        p = float(self.proto.dropout_conf.dropout_ratio)
        self.keep = 1.0 - p
        self.masked = False

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self.src_data(srclayers)
        y = self.buf.get("y", x.shape)
        self.masked = has(flag, job_pb2.kTrain)
        if self.masked:
            mask = self.buf.get("mask", x.shape)
            self.rng.random(out=mask, dtype=F32)
            keep = self.buf.get("keep", x.shape, dtype=bool)
            np.less(mask, self.keep, out=keep)
            np.multiply(keep, F32(1.0 / self.keep), out=mask)
            np.multiply(x, mask, out=y)
        else:
            np.copyto(y, x)
        self.data = y

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        if not wants_grad(src):
            return
        g = as_f32(self.grad)
        gx = self.buf.get("gx", g.shape)
        if self.masked:
            np.multiply(g, self.buf.get("mask", g.shape), out=gx)
        else:
            np.copyto(gx, g)
        src.set_grad(self, gx)
