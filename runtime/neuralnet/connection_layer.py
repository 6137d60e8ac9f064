"""Connection layers: Split, Slice, Concate (inserted by the net builder or
written by the user) and Dummy (a test helper that can also pass through).

What consumers see:
- Split gives every consumer the same data; the gradient it hands its source
  is the sum of the gradients its consumers set.
- Slice gives consumer k piece k of its source, cut into `num_slices` equal
  pieces along `slice_dim`; the gradient pieces are put back together.
- Concate joins >= 2 sources along `concate_dim`; the backward cuts the
  gradient into the sources' pieces.

Consumer order: the net calls `add_dst(dst)` on a Split or Slice once per
consumer, in consumer order, before `setup`; Slice piece k goes to the k-th
consumer added. A consumer that was never added gets the next free index the
first time it asks for its data or shape (so a hand-built chain works too).

Split and Slice keep `grad` up to date as their consumers' gradients arrive
(the sum, or the source-shaped array with the pieces received so far), so an
algorithm that skips layers whose `grad` is None still runs their backward.

Labels travel with the data: these layers expose `aux_data_for(dst)` (the
labels that belong to the piece `dst` reads), which loss and output layers
prefer over `aux_data` when it exists.

Concate layers that the builder inserts between a batch partition and a
feature partition also rescale the gradient (`grad_scale`): see
`runtime.neuralnet.partition`.

The bridge layers are in `bridge.py`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.conf_check import ConfProblem, positive
from runtime.neuralnet.layer import Layer, allocated, kOneToMany, layer_registry


def aux_of(src: Layer, dst: Layer) -> np.ndarray | None:
    """The labels `src` gives `dst`: `aux_data_for(dst)` when src has it, else `aux_data`."""
    per_dst = getattr(src, "aux_data_for", None)
    return per_dst(dst) if per_dst is not None else src.aux_data


class _Fanout(Layer):
    """A layer whose consumers are told apart (Split, Slice): `add_dst`."""

    def __init__(self, proto: job_pb2.LayerProto):
        super().__init__(proto)
        self._dsts: dict[int, int] = {}  # id(dst layer) -> its index
        self._dst_names: list[str] = []

    def add_dst(self, dst: Layer) -> None:
        """Register the next consumer; called by the net in consumer order."""
        if id(dst) not in self._dsts:
            self._dsts[id(dst)] = len(self._dsts)
            self._dst_names.append(dst.name)

    def dst_index(self, dst: Layer) -> int:
        if id(dst) not in self._dsts:
            self.add_dst(dst)
        return self._dsts[id(dst)]


@layer_registry.register(job_pb2.kSplit)
class SplitLayer(_Fanout):
    """Every consumer reads the source's data; the backward sums the grads."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return positive(proto, "split_conf", "num_splits")


    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        n = self.proto.split_conf.num_splits
        if n < 1:
            raise LayerError(f"split_conf.num_splits must be >= 1, got {n}")
        self.shape = tuple(srclayers[0].shape_for(self))
        self._grads: dict[int, np.ndarray] = {}

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        self.data = srclayers[0].data_for(self)
        self.aux_data = aux_of(srclayers[0], self)

    def set_grad(self, dst: Layer, grad: np.ndarray) -> None:
        """Keep `dst`'s gradient; `grad` is the running sum over consumers
        (so the algorithm sees that a gradient arrived)."""
        k = self.dst_index(dst)
        g = np.asarray(grad, dtype=np.float32).reshape(self.shape)
        if not self._grads:  # the first gradient of this backward pass
            self.grad = g.copy()
        elif k in self._grads:  # the same consumer again: replace its share
            total = allocated(self.grad)  # the first gradient made it; added in place
            total += g - self._grads[k]
        else:
            total = allocated(self.grad)
            total += g
        self._grads[k] = g

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        # Consumers without a gradient (output layers) simply add nothing.
        total = allocated(self.grad) if self._grads else np.zeros(self.shape, dtype=np.float32)
        self._grads.clear()
        srclayers[0].set_grad(self, total)


@layer_registry.register(job_pb2.kSlice)
class SliceLayer(_Fanout):
    """Consumer k (in `add_dst` order) reads piece k along `slice_dim`."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return positive(proto, "slice_conf", "num_slices")


    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        conf = self.proto.slice_conf
        src_shape = tuple(srclayers[0].shape_for(self))
        self.dim, self.num = conf.slice_dim, conf.num_slices
        if not 0 <= self.dim < len(src_shape):
            raise LayerError(f"slice_conf.slice_dim is {self.dim}, but the source "
                             f"'{srclayers[0].name}' has shape {list(src_shape)} "
                             f"(dims 0 to {len(src_shape) - 1})")
        if self.num < 1 or src_shape[self.dim] % self.num:
            raise LayerError(f"slice_conf.num_slices is {self.num}, which does not divide "
                             f"dim {self.dim} (size {src_shape[self.dim]}) of the source "
                             f"'{srclayers[0].name}' of shape {list(src_shape)} into equal pieces")
        if len(self._dsts) > self.num:
            raise LayerError(f"{len(self._dsts)} consumers ({', '.join(self._dst_names)}) "
                             f"but slice_conf.num_slices is {self.num}")
        self.src_shape = src_shape
        piece = list(src_shape)
        piece[self.dim] //= self.num
        self.shape = tuple(piece)
        self.pieces: list[np.ndarray] = []
        self._aux_pieces: list[np.ndarray | None] = []
        self._got: set[int] = set()  # consumers whose gradient arrived this pass

    def _index(self, dst: Layer) -> int:
        k = self.dst_index(dst)
        if k >= self.num:
            raise LayerError(f"slice layer '{self.name}' has {self.num} pieces, but "
                             f"'{dst.name}' is consumer number {k + 1}")
        return k

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        self.data = srclayers[0].data_for(self)
        self.pieces = np.split(self.data, self.num, axis=self.dim)
        self.aux_data = aux_of(srclayers[0], self)
        if self.dim == 0 and self.aux_data is not None:
            self._aux_pieces = [*np.split(np.asarray(self.aux_data), self.num)]
        else:
            self._aux_pieces = [self.aux_data] * self.num

    def data_for(self, dst: Layer) -> np.ndarray:
        return self.pieces[self._index(dst)]

    def aux_data_for(self, dst: Layer) -> np.ndarray | None:
        return self._aux_pieces[self._index(dst)] if self._aux_pieces else None

    def set_grad(self, dst: Layer, grad: np.ndarray) -> None:
        """Write `dst`'s gradient into its piece of `grad` (source-shaped)."""
        k = self._index(dst)
        if not self._got:  # the first piece of this backward pass
            self.grad = np.zeros(self.src_shape, dtype=np.float32)
        self._got.add(k)
        step = self.shape[self.dim]
        where = (slice(None),) * self.dim + (slice(k * step, (k + 1) * step),)
        allocated(self.grad)[where] = np.asarray(grad, dtype=np.float32).reshape(self.shape)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        # A piece whose consumer sent no gradient stays zero.
        grad = allocated(self.grad) if self._got else np.zeros(self.src_shape, dtype=np.float32)
        self._got.clear()
        srclayers[0].set_grad(self, grad)


@layer_registry.register(job_pb2.kConcate)
class ConcateLayer(Layer):
    """Joins >= 2 sources along `concate_dim`; the backward cuts the grad
    (times `grad_scale`, 1 unless the net builder sets it)."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return positive(proto, "concate_conf", "num_concates")


    #: set by the builder on the concate layers it inserts between partitions
    grad_scale = 1.0

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, (2, 1 << 30))
        dim = self.dim = self.proto.concate_conf.concate_dim
        shapes = [tuple(s.shape_for(self)) for s in srclayers]
        first = shapes[0]
        if not 0 <= dim < len(first):
            raise LayerError(f"concate_conf.concate_dim is {dim}, but the source "
                             f"'{srclayers[0].name}' has shape {list(first)}")
        for shp in shapes:
            if len(shp) != len(first) or any(a != b for i, (a, b) in enumerate(zip(shp, first, strict=False))
                                             if i != dim):
                raise LayerError(
                    f"sources must agree on every dim except concate_dim {dim}: "
                    + ", ".join(f"'{x.name}' {list(y)}" for x, y in zip(srclayers, shapes, strict=False)))
        self.sizes = [shp[dim] for shp in shapes]
        out = list(first)
        out[dim] = sum(self.sizes)
        self.shape = tuple(out)
        self._cuts = np.cumsum(self.sizes)[:-1]

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        self.data = np.concatenate([s.data_for(self) for s in srclayers], axis=self.dim)
        auxes = [aux_of(s, self) for s in srclayers]
        if self.dim == 0 and all(a is not None for a in auxes):
            self.aux_data = np.concatenate([np.asarray(a) for a in auxes])
        else:
            self.aux_data = auxes[0]

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        grad = np.asarray(self.grad, dtype=np.float32).reshape(self.shape)
        if self.grad_scale != 1.0:
            grad = grad * np.float32(self.grad_scale)
        for s, g in zip(srclayers, np.split(grad, self._cuts, axis=self.dim), strict=False):
            s.set_grad(self, g)


@layer_registry.register(job_pb2.kDummy)
class DummyLayer(Layer):
    """For tests: `input` makes U[0,1) data of `dummy_conf.shape` (no source);
    `output` hands its source U[0,1) gradients; otherwise data and gradient
    pass through unchanged. Random values come from `self.rng`."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        c = proto.dummy_conf
        out: list[ConfProblem] = []
        if c.input and not c.shape:
            out.append(ConfProblem("dummy_conf", "dummy_conf { input: true } needs shape "
                                   "(the shape of the data it generates, batch first)"))
        if any(d < 1 for d in c.shape):
            out.append(ConfProblem("dummy_conf.shape", f"dummy_conf.shape dims must be > 0, "
                                   f"got {list(c.shape)}"))
        return out


    def __init__(self, proto: job_pb2.LayerProto):
        super().__init__(proto)
        self.input = proto.dummy_conf.input
        self.output = proto.dummy_conf.output
        if self.input:  # an input layer: no gradient, many consumers read it
            self.is_input = True
            self.dst_layer_connection = kOneToMany

    def setup(self, srclayers: Sequence[Layer]) -> None:
        if self.input:
            self.check_srclayers(srclayers, 0)
            shape = tuple(self.proto.dummy_conf.shape)
            if not shape or min(shape) < 1:
                raise LayerError(f"an input kDummy layer needs dummy_conf.shape with positive "
                                 f"dims, got {list(shape)}")
            self.shape = shape
        else:
            self.check_srclayers(srclayers, 1)
            self.shape = tuple(srclayers[0].shape_for(self))

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if self.input:
            self.data = self.rng.random(self.shape, dtype=np.float32)
        else:
            self.data = np.array(srclayers[0].data_for(self), dtype=np.float32)
            self.aux_data = aux_of(srclayers[0], self)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if self.output:
            self.grad = self.rng.random(self.shape, dtype=np.float32)
        if srclayers and self.grad is not None:
            srclayers[0].set_grad(self, self.grad)
