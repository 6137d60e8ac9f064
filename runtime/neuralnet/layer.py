"""Layer: the unit a net is built from, and the layer registry.

A layer has three moments (as in SINGA and keras):
1. configure: `__init__(proto)` keeps the LayerProto; the proto *is* the config.
2. set up: `setup(srclayers)` reads its sources' output shapes, checks its
   config, sets `self.shape` (the output shape, batch first) and creates its
   `params` (shapes only; the net allocates and initialises them). Problems
   raise `LayerError` with a message that names the field and the values.
3. compute: `compute_feature(flag, srclayers)` fills `self.data` (and
   `self.aux_data` for layers that carry labels); `compute_gradient(flag,
   srclayers)` reads `self.grad` (the gradient of the loss w.r.t. `self.data`),
   fills every param's `grad` and hands each source its gradient through
   `src.set_grad(self, g)`. Input layers have no gradient.

`flag` is an OR of `job_pb2.Phase` bits (kTrain, kTest, kForward, ...).

A source may give different data to different consumers (Slice, Split): a
layer reads its inputs with `src.data_for(self)` and their shapes with
`src.shape_for(self)`, never `src.data` directly.

Layers register in `layer_registry` under their `LayerType` enum value where
they are defined; user layers register under their `user_type` string.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.model.param import Param
from runtime.neuralnet.conf_check import ConfProblem
from runtime.registry import Registry

layer_registry = Registry("layer type", job_pb2.LayerType,
                          required=("setup", "compute_feature", "compute_gradient"),
                          user_hint='user layers come from --module FILE.py, a module whose '
                                    'class is registered with @register_layer("Name")')

# How a layer connects to its consumers and sources (SINGA's ConnectionType),
# used when the net inserts split, slice and concate layers.
kOneToOne, kOneToAll, kOneToMany = 0, 1, 2


def allocated(a: np.ndarray | None) -> np.ndarray:
    """`a`, known to be set where it is read: a param's `data`/`grad` after the
    net allocated them, a layer's `data`/`grad` after its compute."""
    assert a is not None, "an array is read before it is allocated or computed"
    return a


class Layer:
    #: params a layer of this type has, by position (a tuple: any of those counts;
    #: None: any number, checked in setup)
    num_params: int | tuple[int, ...] | None = 0
    #: kOneToMany: many consumers read the same data (no split layer needed)
    dst_layer_connection = kOneToOne
    #: kOneToAll: each output neuron depends on every input neuron
    src_neuron_connection = kOneToOne
    #: loss and metric layers report `metrics()` at display and test time
    is_loss = False
    #: input layers read data from a store and have no gradient
    is_input = False
    #: set by a partitioned net's builder on a feature partition's layers
    #: (their params are rows of the conf param; see NeuralNet._partition_params)
    _feature_params = False

    def __init__(self, proto: job_pb2.LayerProto):
        self.proto = proto
        self.name = proto.name
        self.shape: tuple[int, ...] = ()
        self.params: list[Param] = []
        self.data: np.ndarray | None = None
        self.grad: np.ndarray | None = None
        self.aux_data: np.ndarray | None = None
        # Set by the net: the worker's random generator (dropout, sampling,
        # random_skip), so that a checkpoint can save and restore it.
        self.rng: np.random.Generator = np.random.default_rng()

    # --- 2. set up -------------------------------------------------------
    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """The problems of this layer type's own conf block (its `*_conf`
        fields), found from the proto alone: no data file, no other layer.
        `runtime.config.validate` reports them with the fields' positions;
        [] when there is none. `submit`: the job is being submitted, so an
        option this platform lacks is an error rather than a warning. A
        subclass overrides it for the rules of its conf (see `conf_check`)."""
        return []

    def raise_conf_errors(self) -> None:
        """Raise the first error `check_conf` finds in this layer's proto as a
        LayerError. A `setup` starts with it, so that a layer set up outside
        the net builder (a test, a tool) keeps the rules of its conf, written
        once in `check_conf`."""
        for p in type(self).check_conf(self.proto):
            if p.severity == "error":
                raise LayerError(p.message)

    def setup(self, srclayers: Sequence[Layer]) -> None:
        """Default: one source, same shape, no params."""
        self.check_srclayers(srclayers, 1)
        self.shape = tuple(srclayers[0].shape_for(self))

    def check_srclayers(self, srclayers: Sequence[Layer], n: int | tuple[int, int]) -> None:
        lo, hi = (n, n) if isinstance(n, int) else n
        if not lo <= len(srclayers) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise LayerError(
                f"a {job_pb2.LayerType.Name(self.proto.type)} layer takes {want} "
                f"srclayers, got {len(srclayers)}"
                + (f" ({', '.join(s.name for s in srclayers)})" if srclayers else ""))

    def make_param(self, index: int, shape: Sequence[int]) -> Param:
        """Create the param at position `index` of the proto's `param` list."""
        if index >= len(self.proto.param):
            raise LayerError(
                f"a {job_pb2.LayerType.Name(self.proto.type)} layer needs a param "
                f"at position {index + 1}, but only {len(self.proto.param)} are given")
        p = Param(self.proto.param[index], tuple(shape))
        self.params.append(p)
        return p

    # --- 3. compute -------------------------------------------------------
    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        raise NotImplementedError

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        raise NotImplementedError

    # --- what consumers see ---------------------------------------------
    def data_for(self, dst: Layer) -> np.ndarray:
        assert self.data is not None, f"layer '{self.name}' is read before it computed its data"
        return self.data

    def shape_for(self, dst: Layer) -> tuple[int, ...]:
        return self.shape

    def set_grad(self, dst: Layer, grad: np.ndarray) -> None:
        self.grad = grad

    # --- metrics, state ---------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Loss/metric layers: averages since the last `reset_metrics()`."""
        return {}

    def reset_metrics(self) -> None:
        pass

    def state(self) -> dict:
        """What an exact resume needs besides params (input layers: position)."""
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def close(self) -> None:
        """Release files and threads (input prefetchers, output writers)."""

    def __repr__(self) -> str:
        kind = self.proto.user_type or job_pb2.LayerType.Name(self.proto.type)
        return f"{type(self).__name__}({self.name!r}, {kind}, shape={self.shape})"


def has(flag: int, phase: int) -> bool:
    """Whether the Phase bit `phase` is set in `flag`."""
    return bool(flag & phase)


def create_layer(proto: job_pb2.LayerProto) -> Layer:
    """Instantiate the registered class for the proto's type or user_type."""
    cls = layer_registry.lookup(proto.type, proto.user_type)
    return cls(proto)
