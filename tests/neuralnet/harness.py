"""One call per layer: construct from proto text, set up against given
source shapes, check output shape and param count, and compare analytic
gradients (params and sources) with central differences.

    check_layer('type: kInnerProduct innerproduct_conf {num_output: 3} '
                'param {name: "w" init {type: kGaussian}} param {name: "b"}',
                srcs=[rng.standard_normal((4, 5))], shape=(4, 3), nparams=2)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf import text_format

from conf import job_pb2
from runtime.neuralnet import create_layer
from runtime.neuralnet.layer import Layer

TRAIN = job_pb2.kTrain | job_pb2.kForward
BACK = job_pb2.kTrain | job_pb2.kBackward


class Source(Layer):
    """A fixed input: data (and optional aux labels); records the grad it gets."""

    dst_layer_connection = 2  # kOneToMany

    def __init__(self, name: str, data: np.ndarray, aux: np.ndarray | None = None):
        super().__init__(job_pb2.LayerProto(name=name))
        self.data = np.asarray(data, dtype=np.float32)
        self.shape = self.data.shape
        self.aux_data = aux

    def compute_feature(self, flag, srclayers):
        pass

    def compute_gradient(self, flag, srclayers):
        pass


def make(proto_text: str, srcs: Sequence[np.ndarray | Source], name: str = "l",
         seed: int = 0) -> tuple[Layer, list[Source]]:
    proto = text_format.Parse(f'name: "{name}" ' + proto_text, job_pb2.LayerProto())
    sources = [s if isinstance(s, Layer) else Source(f"src{i}", s) for i, s in enumerate(srcs)]
    layer = create_layer(proto)
    layer.rng = np.random.default_rng(seed)
    layer.setup(sources)
    rng = np.random.default_rng(seed + 1)
    for p in layer.params:
        p.allocate()
        p.data[...] = rng.standard_normal(p.shape).astype(np.float32) * 0.5
    return layer, sources


def loss_of(layer: Layer, sources, proj: np.ndarray | None, flag: int) -> float:
    layer.compute_feature(flag, sources)
    if proj is None:  # a loss layer: its own loss
        return float(layer.last_loss)  # type: ignore[attr-defined]  # a loss layer
    return float(np.sum(layer.data.astype(np.float64) * proj))


def check_layer(proto_text: str, srcs: Sequence[np.ndarray | Source], shape=None,
                nparams: int | None = None, grad_srcs: Sequence[int] | None = None,
                eps: float = 1e-2, atol: float = 1e-3, rtol: float = 2e-2,
                flag: int = TRAIN, seed: int = 0, loss_layer: bool = False,
                reseed_each_call: bool = False) -> Layer:
    """Set up the layer, check shape and nparams, then gradient-check it.

    Non-loss layers are checked through L = sum(data * R) for a fixed random R;
    loss layers (`loss_layer=True`) must expose `last_loss` (the loss of the
    last batch, before any scale averaging across calls) and start backward
    from their own gradient. `grad_srcs` lists the sources whose gradient is
    checked (default: all). `reseed_each_call` resets the layer's rng before
    each forward pass (dropout: the same mask every time).
    """
    layer, sources = make(proto_text, srcs, seed=seed)
    if shape is not None:
        assert tuple(layer.shape) == tuple(shape), f"shape {layer.shape} != {shape}"
    if nparams is not None:
        assert len(layer.params) == nparams, f"{len(layer.params)} params != {nparams}"
    grad_srcs = range(len(sources)) if grad_srcs is None else grad_srcs

    def run() -> float:
        if reseed_each_call:
            layer.rng = np.random.default_rng(seed)
        return loss_of(layer, sources, proj, flag)

    proj = None
    if not loss_layer:
        layer.compute_feature(flag, sources)
        proj = np.random.default_rng(seed + 2).standard_normal(layer.data.shape)
    run()
    if not loss_layer:
        layer.grad = proj.astype(np.float32)
    for s in sources:
        s.grad = None
    layer.compute_gradient(BACK, sources)
    analytic = {f"param {p.name}": p.grad.copy() for p in layer.params}
    for i in grad_srcs:
        g = sources[i].grad
        assert g is not None, f"no gradient given to source {i}"
        analytic[f"source {i}"] = np.array(g, dtype=np.float64).copy()

    targets = {f"param {p.name}": p.data for p in layer.params}
    targets.update({f"source {i}": sources[i].data for i in grad_srcs})
    for key, arr in targets.items():
        num = np.zeros(arr.shape)
        flat = arr.reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + eps
            up = run()
            flat[j] = old - eps
            down = run()
            flat[j] = old
            num.reshape(-1)[j] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic[key], num, atol=atol, rtol=rtol,
                                   err_msg=f"{layer.name}: gradient of {key}")
    return layer
