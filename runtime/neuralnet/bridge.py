"""Bridge layers: the edges of a partitioned net that cross partitions
(SINGA's kBridgeSrc / kBridgeDst), and how they carry data between the
workers of a group.

The net builder inserts a pair for every edge from partition i of a layer
into partition j != i of a concate layer (reference §6):

    slice(x)@i -> bridge_src(slice(x)@i->concate(slice(x))@j)      partition i
               -> bridge_dst(slice(x)@i->concate(slice(x))@j)      partition j
               -> concate(slice(x))@j

Forward, the src hands its source's data (and labels) to the dst; backward,
the dst hands the gradient its consumer set back to the src. Neither copies:
the dst's `data` is the very array the src's source made, and the src's
`grad` is the array the dst received.

Two modes, chosen by the builder:
- Both halves in one net (the whole partitioned graph built in one process,
  e.g. for tests or `singa validate`): the dst's srclayer is the src, and
  the pair works like any other edge.
- Each half in its worker's net (`remote = True`): the halves talk through a
  `BridgeLink`, which the process sets on the layers (`attach`) before
  training. Forward, the src sends and the dst blocks until the data of this
  step arrives; backward, the dst sends the gradient in its
  `compute_gradient`, and reading the src's `grad` blocks until it arrives,
  so an algorithm that looks at `layer.grad` before calling
  `compute_gradient` (BP, BPTT) finds it there.

Every training forward through a bridge is answered by exactly one gradient:
a dst whose consumer set no gradient sends zeros (a gradient of "nothing"),
so its src never waits forever. The builder orders every worker's layers as
one topological order of the whole graph (a src before its dst), which
makes the blocking receives deadlock-free in both directions.

Links (`runtime.ps.group.BridgeLink`) deliver messages per (group, bridge id,
direction) in order: references in memory between workers of one process,
`kData` messages through the stubs between processes (`ipc://` on one host,
`tcp://` across hosts).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.connection_layer import aux_of
from runtime.neuralnet.layer import Layer, layer_registry

log = logging.getLogger(__name__)

#: message directions of a bridge pair
DATA, GRAD = 0, 1


class Link(Protocol):
    """What a bridge needs of its worker's link to the group (see
    `runtime.ps.group.BridgeLink`)."""

    def send(self, bridge: int, direction: int, to_partition: int, data: np.ndarray,
             aux: np.ndarray | None = None) -> None: ...

    def recv(self, bridge: int, direction: int, shape: tuple[int, ...], what: str
             ) -> tuple[np.ndarray, np.ndarray | None]: ...


class _Bridge(Layer):
    """What both halves share: their pair's id and partitions, the link."""

    def __init__(self, proto: job_pb2.LayerProto):
        super().__init__(proto)
        self.bridge_id = -1       # set by the builder: the pair's index in the group's graph
        self.src_partition = 0    # the partitions the pair connects
        self.dst_partition = 0
        self.remote = False       # True: the other half is in another worker's net
        self.link: Link | None = None

    def _link(self) -> Link:
        if self.link is None:
            raise LayerError(
                f"bridge layer '{self.name}' connects partition {self.src_partition} to "
                f"partition {self.dst_partition} of a worker group, but no link to the other "
                "worker was attached; a partitioned net runs inside the workers of a group "
                "(singa submit), or is built whole (NeuralNet.create(..., npartitions=n))")
        return self.link


@layer_registry.register(job_pb2.kBridgeSrc)
class BridgeSrcLayer(_Bridge):
    """The sending half: shares its source's data; its gradient comes from
    the dst (see the module docstring)."""

    def __init__(self, proto: job_pb2.LayerProto):
        self._grad: np.ndarray | None = None
        self._awaiting = False    # a gradient is due for the last training forward
        super().__init__(proto)

    @property
    def grad(self) -> np.ndarray | None:
        if self._awaiting:
            self._awaiting = False
            self._grad, _ = self._link().recv(self.bridge_id, GRAD, self.shape,
                                              f"the gradient for '{self.name}'")
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray | None) -> None:
        self._grad = value

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        self.shape = tuple(srclayers[0].shape_for(self))

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        self.data = srclayers[0].data_for(self)
        self.aux_data = aux_of(srclayers[0], self)
        if self.remote:
            self._link().send(self.bridge_id, DATA, self.dst_partition, self.data, self.aux_data)
            self._awaiting = bool(flag & job_pb2.kTrain)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        g = self.grad
        if g is not None:
            srclayers[0].set_grad(self, g)


@layer_registry.register(job_pb2.kBridgeDst)
class BridgeDstLayer(_Bridge):
    """The receiving half: its data is the src's; backward it returns the
    gradient its consumer set (zeros if none did, see the module docstring)."""

    def __init__(self, proto: job_pb2.LayerProto):
        self._grad: np.ndarray | None = None
        self._owes = False        # a gradient is owed for the last training forward
        super().__init__(proto)
        self.twin: Layer | None = None  # remote: the local layer whose output shape it has

    @property
    def grad(self) -> np.ndarray | None:
        if self._grad is None and self._owes:
            return np.zeros(self.shape, dtype=np.float32)
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray | None) -> None:
        self._grad = value

    def setup(self, srclayers: Sequence[Layer]) -> None:
        if srclayers:
            self.check_srclayers(srclayers, 1)
            self.shape = tuple(srclayers[0].shape_for(self))
        elif self.twin is not None:
            # partitions of a layer have equal shapes: the src's output is
            # what the same layer of this partition gives the same consumer
            self.shape = tuple(self.twin.shape)
        else:
            raise LayerError(f"bridge layer '{self.name}' has neither its bridge_src nor the "
                             "shape of what it receives")

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if srclayers:
            self.data = srclayers[0].data_for(self)
            self.aux_data = aux_of(srclayers[0], self)
            return
        self.data, self.aux_data = self._link().recv(self.bridge_id, DATA, self.shape,
                                                     f"the data for '{self.name}'")
        self._owes = bool(flag & job_pb2.kTrain)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        g = self.grad
        if srclayers:
            if g is not None:
                srclayers[0].set_grad(self, g)
            return
        if self._owes:
            self._owes = False
            self._link().send(self.bridge_id, GRAD, self.src_partition,
                              np.asarray(g, dtype=np.float32).reshape(self.shape))


def bridges(layers: Sequence[Layer]) -> list[_Bridge]:
    """The bridge layers among `layers`."""
    return [l for l in layers if isinstance(l, _Bridge)]


def attach(layers: Sequence[Layer], link: Link) -> int:
    """Give the remote bridge halves among `layers` their worker's link;
    returns how many there are."""
    found = [b for b in bridges(layers) if b.remote]
    for b in found:
        b.link = link
    return len(found)
