"""LocalServer: the parameter service of a single-process, single-worker job.

It plays SINGA's stub and server for one worker in one process: `update`
applies the updater as soon as every param sharing the same values has
reported its gradient (their gradients are summed, as SINGA's stub sums the
grads of params that share memory), and `collect` has nothing to wait for.

Contract: `put` every owned param once before training; then per step each
trainable param (owner or sharer) calls `update` exactly once.
"""
from __future__ import annotations

import numpy as np

from runtime.param import Param
from runtime.updater import Updater


class LocalServer:
    def __init__(self, updater: Updater | None):
        self.updater = updater
        self._replicas: dict[str, int] = {}      # owner name -> params sharing its values
        self._pending: dict[str, list[Param]] = {}
        self._sum: dict[str, np.ndarray] = {}

    def register(self, params: list[Param]) -> None:
        """Count, for each owner, how many trainable params report grads for it."""
        self._replicas.clear()
        for p in params:
            if p.trainable:
                owner = p.owner or p
                self._replicas[owner.name] = self._replicas.get(owner.name, 0) + 1

    def put(self, param: Param) -> None:
        param.allocate()

    def collect(self, param: Param) -> None:
        pass

    def update(self, step: int, param: Param) -> None:
        owner = param.owner or param
        n = self._replicas.get(owner.name, 1)
        if n == 1:
            self._apply(step, owner, param.grad)
            owner.version += 1
            return
        pending = self._pending.setdefault(owner.name, [])
        pending.append(param)
        if len(pending) < n:
            return
        acc = self._sum.get(owner.name)
        if acc is None:
            acc = self._sum[owner.name] = np.empty(owner.shape, dtype=np.float32)
        np.copyto(acc, pending[0].grad)
        for q in pending[1:]:
            acc += q.grad
        self._apply(step, owner, acc)
        owner.version += 1
        pending.clear()

    def _apply(self, step: int, owner: Param, grad: np.ndarray) -> None:
        self.updater.apply(step, owner.name, owner.data, grad, owner.lr_scale, owner.wd_scale)

    def state(self) -> dict[str, np.ndarray]:
        return self.updater.state()

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.updater.load_state(state)
