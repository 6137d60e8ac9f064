"""Param: a named parameter of a layer, as in SINGA.

A Param has float32 `data` and `grad` arrays of `shape`, a `version` (bumped
by each update the servers apply) and `last_version` (set when an update is
sent). Its identity across nets, checkpoints and sharing is its `name`.

Contract:
- `Layer.setup` creates Params with their shape only; `allocate()` makes the
  arrays and `init_values(rng)` fills them by the `init { }` method.
- `share_from(owner)` makes `data` the owner's array (the values are shared),
  while `grad` stays separate; whoever applies updates sums the grads of the
  sharing params (SINGA's stub and server do that).
"""
from __future__ import annotations

import numpy as np

from conf import job_pb2


class Param:
    def __init__(self, proto: job_pb2.ParamProto, shape: tuple[int, ...]):
        self.proto = proto
        self.name = proto.name
        self.shape = tuple(int(d) for d in shape)
        self.data: np.ndarray | None = None
        self.grad: np.ndarray | None = None
        self.version = 0
        self.last_version = -1
        self.owner: Param | None = None  # set by share_from
        # False for state a layer keeps in a param but no updater may touch
        # (batch norm's running statistics): never sent as an update
        self.trainable = True

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return 4 * self.size

    @property
    def lr_scale(self) -> float:
        return self.proto.lr_scale

    @property
    def wd_scale(self) -> float:
        return self.proto.wd_scale

    def allocate(self) -> None:
        """Make `data` (unless shared) and `grad`, zero-filled."""
        if self.data is None:
            self.data = np.zeros(self.shape, dtype=np.float32)
        if self.grad is None:
            self.grad = np.zeros(self.shape, dtype=np.float32)

    def init_values(self, rng: np.random.Generator, version: int = 0) -> None:
        """Fill `data` by the proto's init method; set the version."""
        from runtime.model import param_init  # the init-method registry

        self.allocate()
        assert self.data is not None  # allocate() made it
        if self.owner is None:
            self.data[...] = param_init.generate(self.proto.init, self.shape, rng)
        self.version = version

    def share_from(self, owner: Param) -> None:
        """Share `owner`'s values; shapes must agree (checked by the builder)."""
        self.owner = owner
        owner.allocate()
        self.data = owner.data

    def __repr__(self) -> str:
        shared = f" shares {self.owner.name!r}" if self.owner is not None else ""
        return f"Param({self.name!r}, shape={self.shape}, v{self.version}{shared})"
