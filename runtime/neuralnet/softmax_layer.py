"""Softmax layer (kSoftmax, kCudnnSoftmax): probabilities for prediction, with
a real backward (SINGA v0.3 has none).

Each instance's features (the source flattened to [N, D]) are split into
`softmax_conf.num_softmax_per_instance` equal groups, each normalised on its
own. Output shape: [N, D] for one group, [N, groups, D/groups] otherwise (as
SINGA's).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.conf_check import ConfProblem, positive
from runtime.neuralnet.layer import Layer, allocated, kOneToAll, layer_registry
from runtime.neuralnet.neuron_layer import NeuronLayer, as_f32, type_name, wants_grad


@layer_registry.register(job_pb2.kSoftmax, job_pb2.kCudnnSoftmax)
class SoftmaxLayer(NeuronLayer):
    """y = exp(x - max) / sum(exp(x - max)) per group; dx = y * (g - sum(g * y))."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return positive(proto, "softmax_conf", "num_softmax_per_instance")


    src_neuron_connection = kOneToAll

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        self.src_shape = tuple(srclayers[0].shape_for(self))
        if len(self.src_shape) < 2:
            raise LayerError(f"a {type_name(self)} layer needs a source with a batch axis and "
                             f"features, got shape {self.src_shape}")
        n = self.src_shape[0]
        d = int(np.prod(self.src_shape[1:], dtype=np.int64))
        groups = self.proto.softmax_conf.num_softmax_per_instance
        if groups <= 0 or d % groups:
            raise LayerError(
                f"{type_name(self)}: softmax_conf.num_softmax_per_instance must be a positive "
                f"divisor of the {d} features per instance, got {groups}")
        self.groups = groups
        self.dims = (n, groups, d // groups)
        self.shape = (n, d) if groups == 1 else self.dims

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self.src_data(srclayers).reshape(self.dims)
        y = self.buf.get("y", self.dims)
        np.subtract(x, x.max(axis=2, keepdims=True), out=y)
        np.exp(y, out=y)
        y /= y.sum(axis=2, keepdims=True)
        self.data = y.reshape(self.shape)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        if not wants_grad(src):
            return
        y = allocated(self.data).reshape(self.dims)
        g = as_f32(self.grad).reshape(self.dims)
        gx = self.buf.get("gx", self.dims)
        np.multiply(g, y, out=gx)
        dot = gx.sum(axis=2, keepdims=True)
        np.subtract(g, dot, out=gx)
        gx *= y
        src.set_grad(self, gx.reshape(self.src_shape))
