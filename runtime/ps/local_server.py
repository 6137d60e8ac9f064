"""LocalServer: the parameter service of a single-process, single-worker job.

It plays SINGA's stub and server for one worker in one process. Updates run
in a server thread, as in SINGA, so that applying the updater to one layer's
params overlaps the worker's backward pass through the layers below it;
`collect` waits until a param's pending update has been applied (SINGA's
`Collect`: version > last_version).

Params that share values (`share_from`) report separate gradients; the
update is applied once all of them have reported, on their sum (as SINGA's
stub sums the grads of params sharing memory).

Contract: `register` the net's params and `put` every owned param before
training; then per step each trainable param calls `update` exactly once, and
must not touch its `grad` again until `collect` has returned for it (BP's
forward pass collects every param before the backward pass writes grads).
"""
from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from runtime.model.param import Param
from runtime.model.updater import Updater

_STOP = object()


class LocalServer:
    def __init__(self, updater: Updater | None, threaded: bool = True):
        self.updater = updater
        self._replicas: dict[str, int] = {}      # owner name -> params reporting grads for it
        self._pending: dict[str, list[Param]] = {}
        self._sum: dict[str, np.ndarray] = {}
        self._cond = threading.Condition()
        self._queue: queue.SimpleQueue[Any] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if threaded and updater is not None:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._serve, name="server", daemon=True)
            self._thread.start()

    def register(self, params: list[Param]) -> None:
        """Count, for each owner, how many trainable params report grads for it."""
        self._replicas.clear()
        for p in params:
            if p.trainable:
                owner = p.owner or p
                self._replicas[owner.name] = self._replicas.get(owner.name, 0) + 1

    def put(self, param: Param) -> None:
        param.allocate()
        param.last_version = param.version - 1

    def update(self, step: int, param: Param) -> None:
        owner = param.owner or param
        if owner.last_version < owner.version:
            owner.last_version = owner.version  # an update is pending from here on
        if self._queue is None:
            self._receive(step, param)
        else:
            self._queue.put((step, param))

    def collect(self, param: Param) -> None:
        owner = param.owner or param
        if owner.version > owner.last_version:
            return
        with self._cond:
            self._cond.wait_for(lambda: owner.version > owner.last_version or self._error is not None)
        if self._error is not None:
            raise self._error

    def state(self) -> dict[str, np.ndarray]:
        self._drain()
        return self.updater.state() if self.updater is not None else {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        assert self.updater is not None, "a server without an updater has no state"
        self.updater.load_state(state)

    def close(self) -> None:
        if self._thread is not None:
            assert self._queue is not None  # made with the thread
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    # ------------------------------------------------------------ server ---
    def _serve(self) -> None:
        assert self._queue is not None  # made before this thread starts
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._receive(*item)
            except BaseException as e:  # noqa: BLE001 - re-raised in the worker's next collect
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
                return

    def _drain(self) -> None:
        if self._queue is None:
            return
        done = threading.Event()
        self._queue.put((None, done))
        done.wait()

    def _receive(self, step: int, param: Param | threading.Event) -> None:
        if isinstance(param, threading.Event):  # a drain marker
            param.set()
            return
        owner = param.owner or param
        n = self._replicas.get(owner.name, 1)
        if n == 1:
            self._apply(step, owner, _grad(param))
            return
        pending = self._pending.setdefault(owner.name, [])
        pending.append(param)
        if len(pending) < n:
            return
        acc = self._sum.get(owner.name)
        if acc is None:
            acc = self._sum[owner.name] = np.empty(owner.shape, dtype=np.float32)
        np.copyto(acc, _grad(pending[0]))
        for q in pending[1:]:
            acc += _grad(q)
        pending.clear()
        self._apply(step, owner, acc)

    def _apply(self, step: int, owner: Param, grad: np.ndarray) -> None:
        assert self.updater is not None, "a server without an updater applies no gradient"
        assert owner.data is not None  # allocated when the net was set up
        self.updater.apply(step, owner.name, owner.data, grad, owner.lr_scale, owner.wd_scale)
        with self._cond:
            owner.version += 1
            self._cond.notify_all()


def _grad(p: Param) -> np.ndarray:
    """The gradient `p` reports: a param is sent to the server only once it is computed."""
    assert p.grad is not None
    return p.grad
