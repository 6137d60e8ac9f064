"""Updaters: the rules servers apply to param values (SINGA's Updater, `updater { }`).

An `Updater` works on raw float32 arrays under an arbitrary key (a param or a
param slice name), so a server can call it on its slices:

    upd = create_updater(job.updater)
    upd.apply(step, "w1", data, grad, lr_scale, wd_scale, grad_scale)  # data updated in place
    upd.update(step, param, grad_scale)                                # same, from a Param

Every call runs the common prologue of SINGA v0.3, then the type's rule:

    if clip_high > clip_low: grad clipped to [clip_low, clip_high]  (kSGD, kNesterov,
                                                                     kAdaGrad, kRMSProp only)
    lr = learning_rate.get(step) * lr_scale
    wd = weight_decay * wd_scale
    g  = grad * grad_scale;  if wd > 0: g += wd * w

| type      | rule                                                        | history ("<key>/<name>") |
|-----------|-------------------------------------------------------------|--------------------------|
| kSGD      | momentum > 0: h = momentum*h - lr*g; w += h. Else w -= lr*g | history (if momentum > 0)|
| kNesterov | h' = momentum*h + lr*g; w -= (1+momentum)*h' - momentum*h   | history                  |
| kAdaGrad  | h += g^2; w -= lr*g / sqrt(h + delta)                       | history                  |
| kRMSProp  | h = rho*h + (1-rho)*g^2; w -= lr*g / sqrt(h + delta)        | history                  |
| kAdaDelta | h = rho*h + (1-rho)*g^2; d = g*sqrt(u+delta)/sqrt(h+delta); | history, update          |
|           | u = rho*u + (1-rho)*d^2; w -= lr*d                          |                          |
| kAdam     | m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;                 | m, v, t                  |
|           | w -= lr * (m/(1-b1^t)) / sqrt(v/(1-b2^t) + delta)           |                          |
| kAdamMax  | m = b1*m + (1-b1)*g; u = max(b2*u, |g|);                    | m, u, t                  |
|           | w -= lr/(1-b1^t) * m / (u + delta)                          |                          |

`t` is the number of updates applied under that key (this one included).
Where this differs from SINGA v0.3 (see docs/compat.md): AdaGrad uses the
proto's `delta` (SINGA always uses 1e-8); Adam has bias correction (SINGA has
none); AdamMax is Kingma & Ba's AdaMax with bias correction and `delta` in the
denominator (SINGA: no bias correction, and `u = max(b2*u, |g|) + delta` stored,
so delta accumulates in u).

Keys are stringified (`str(key)`): `state()` returns every history array as
`"<key>/<name>"` -> array (copies; `t` as an int64 array of shape (1,)), which
`load_state` takes back so that a resumed job continues exactly.

Concurrency: calls for different keys may run in different threads (each
thread gets its own scratch buffers); calls for the same key must not overlap.
The updater does not touch param versions: that is the server's job.

A user updater subclasses `Updater`, declares its history `slots` and defines
`rule(w, g, lr, hist)`, then registers with `@register_updater("Name")` and is
selected by `updater { user_type: "Name" }`. A class that does not subclass
`Updater` must provide apply, update, state and load_state itself.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from conf import job_pb2
from runtime import blas
from runtime.errors import UserError
from runtime.model.lr import LRGen, create_lr
from runtime.registry import Registry

if TYPE_CHECKING:
    from runtime.model.param import Param

log = logging.getLogger(__name__)

updater_registry = Registry("updater type", job_pb2.UpdaterType,
                            required=("apply", "update", "state", "load_state"))

T = TypeVar("T")

# Below this weight decay the in-place prologue would overflow float32
# (it scales g by grad_scale / wd), so a temporary is used instead.
_TINY_WD = 1e-30

# Elements per block when a large array is updated block by block (64K
# float32 = 256 KB, so a block and its history fit in L2).
_BLOCK = 1 << 16


@dataclass
class History:
    """The per-key state of an updater: named arrays shaped like the key's data, and t."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    t: int = 0


class Updater:
    """Base updater: the SINGA prologue, per-key history, state for checkpoints.

    Subclasses set the class attributes and define `rule`:
    - `slots`: names of the history arrays (zero-initialised, shaped like data);
    - `clips`: whether clip_low/clip_high apply (SINGA: SGD, Nesterov, AdaGrad, RMSProp);
    - `fold_lr`: the rule is linear in g, so the prologue hands it lr*g and lr=1
      (saves one pass over the array);
    - `uses_t`: `t` is saved in `state()`.
    """

    slots: tuple[str, ...] = ()
    clips = True
    fold_lr = False
    uses_t = False

    def __init__(self, proto: job_pb2.UpdaterProto):
        self.proto = proto
        self.lr_gen: LRGen = create_lr(proto.learning_rate)
        self.momentum = proto.momentum
        self.weight_decay = proto.weight_decay
        self.delta = proto.delta
        self.clip_low = proto.clip_low
        self.clip_high = proto.clip_high
        self._hist: dict[str, History] = {}
        self._hist_lock = threading.Lock()
        self._local = threading.local()
        #: threads that share the elementwise work of one large update
        self.threads = 1
        self._executor: ThreadPoolExecutor | None = None
        self._executor_size = 0

    # --- the rule a subclass defines ------------------------------------
    def rule(self, w: np.ndarray, g: np.ndarray, lr: float, hist: History) -> None:
        """Update `w` in place from `g` (a scratch array the rule may overwrite).

        `hist.arrays` holds the `slots` arrays for this key; `hist.t` counts the
        updates including this one. `self.scratch(shape)` gives one more buffer.
        """
        raise NotImplementedError

    # --- public API -----------------------------------------------------
    def apply(self, step: int, key: Hashable, data: np.ndarray, grad: np.ndarray,
              lr_scale: float = 1.0, wd_scale: float = 1.0, grad_scale: float = 1.0) -> None:
        """Update `data` in place from `grad` (not modified) at `step` under `key`."""
        if grad.shape != data.shape:
            raise ValueError(f"updater: grad shape {grad.shape} != data shape "
                             f"{data.shape} for {key!r}")
        hist = self._history(str(key), data.shape)
        hist.t += 1
        lr = self.lr_gen.get(step) * lr_scale
        wd = self.weight_decay * wd_scale
        if self._fused(data, grad, lr, wd, grad_scale, hist):
            return
        if data.size <= _BLOCK or not (data.flags.c_contiguous and grad.flags.c_contiguous):
            self._apply_block(data, grad, lr, wd, grad_scale, hist)
            return
        # Large arrays go block by block, so that the prologue's and the rule's
        # passes over a block hit the cache: main memory is then read and
        # written about once per array instead of once per pass. With
        # `threads` > 1 the blocks are shared out over that many threads
        # (numpy releases the GIL in its loops), as PyTorch's optimizers
        # spread their elementwise work over its intra-op threads.
        w, g = data.reshape(-1), grad.reshape(-1)
        flat = {k: v.reshape(-1) for k, v in hist.arrays.items()}
        starts = range(0, w.size, _BLOCK)

        def run(part: range) -> None:
            for start in part:
                sl = slice(start, start + _BLOCK)
                view = History({k: v[sl] for k, v in flat.items()}, hist.t)
                self._apply_block(w[sl], g[sl], lr, wd, grad_scale, view)

        n = min(self.threads, len(starts))
        if n <= 1:
            run(starts)
            return
        pool = self._pool()
        futures = [pool.submit(run, starts[i::n]) for i in range(1, n)]
        run(starts[0::n])
        for f in futures:
            f.result()

    def _fused(self, data: np.ndarray, grad: np.ndarray, lr: float, wd: float,
               grad_scale: float, hist: History) -> bool:
        """A rule may apply itself with fused BLAS calls; True when it did."""
        return False

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None or self._executor_size != self.threads - 1:
            self._executor = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="updater")
            self._executor_size = self.threads - 1
        return self._executor

    def _apply_block(self, data: np.ndarray, grad: np.ndarray, lr: float, wd: float,
                     grad_scale: float, hist: History) -> None:
        g = self._scratch(0, data.shape)
        src = grad
        if self.clips and self.clip_high > self.clip_low:
            np.clip(grad, self.clip_low, self.clip_high, out=g)
            src = g
        s = lr if self.fold_lr else 1.0
        if wd >= _TINY_WD:
            # g = s*(grad_scale*src + wd*w) without a temporary (numpy has no axpy).
            np.multiply(src, grad_scale / wd, out=g)
            g += data
            g *= wd * s
        else:
            np.multiply(src, grad_scale * s, out=g)
            if wd > 0:
                g += (wd * s) * data
        self.rule(data, g, 1.0 if self.fold_lr else lr, hist)

    def update(self, step: int, param: Param, grad_scale: float = 1.0) -> None:
        """`apply` on a Param's data and grad with its lr_scale and wd_scale."""
        assert param.data is not None and param.grad is not None, f"param {param.name} is not allocated"
        self.apply(step, param.name, param.data, param.grad,
                   param.lr_scale, param.wd_scale, grad_scale)

    def state(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Copies of every history array (or those of `keys`) as "<key>/<name>"
        (and "<key>/t" if used)."""
        out: dict[str, np.ndarray] = {}
        items = (list(self._hist.items()) if keys is None
                 else [(k, self._hist[k]) for k in keys if k in self._hist])
        for key, hist in items:
            for name, arr in hist.arrays.items():
                out[f"{key}/{name}"] = arr.copy()
            if self.uses_t:
                out[f"{key}/t"] = np.array([hist.t], dtype=np.int64)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Set the history of every key named in `state` (as `state()` gave it).

        A key in `state` replaces that key's whole history (slots it lacks
        restart from zero); other keys keep theirs. Names this updater does not
        keep (a checkpoint from another updater type) are skipped with a warning.
        `t` may come back as any numeric dtype (a checkpoint stores floats).
        """
        loaded: dict[str, History] = {}
        for full, arr in state.items():
            key, sep, name = full.rpartition("/")
            if not sep:
                raise UserError(f"updater state name {full!r} is not '<key>/<name>'")
            hist = loaded.setdefault(key, History())
            arr = np.asarray(arr)
            if name == "t" and self.uses_t:
                hist.t = int(round(float(arr.reshape(-1)[0])))
            elif name in self.slots:
                hist.arrays[name] = np.array(arr, dtype=np.float32, copy=True)
            else:
                log.warning("updater %s keeps no %r; skipping %r from the saved state",
                            type(self).__name__, name, full)
        with self._hist_lock:
            self._hist.update(loaded)

    def scratch(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 work array of `shape` for `rule` (this thread's, reused)."""
        return self._scratch(1, shape)

    # --- internals ------------------------------------------------------
    def _history(self, key: str, shape: tuple[int, ...]) -> History:
        hist = self._hist.get(key)
        if hist is None:
            with self._hist_lock:
                hist = self._hist.setdefault(key, History())
        for name in self.slots:
            arr = hist.arrays.get(name)
            if arr is None:
                hist.arrays[name] = np.zeros(shape, dtype=np.float32)
            elif arr.shape != shape:
                if arr.size != int(np.prod(shape)):
                    raise UserError(
                        f"updater history {key}/{name} has shape {arr.shape} but the "
                        f"data under {key!r} has shape {shape} (was the state loaded "
                        "from a job with other param shapes or slicing?)")
                hist.arrays[name] = arr.reshape(shape)
        return hist

    def _scratch(self, i: int, shape: tuple[int, ...]) -> np.ndarray:
        # Flat per-thread buffers sized to the largest key seen, so an update
        # allocates nothing after the first step.
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = [np.empty(0, np.float32), np.empty(0, np.float32)]
        n = int(np.prod(shape))
        if bufs[i].size < n:
            bufs[i] = np.empty(n, dtype=np.float32)
        return bufs[i][:n].reshape(shape)

    def _fields(self) -> str:
        parts = [f"lr={self.lr_gen!r}"]
        if self.momentum:
            parts.append(f"momentum={self.momentum:g}")
        if self.weight_decay:
            parts.append(f"weight_decay={self.weight_decay:g}")
        if self.clip_high > self.clip_low:
            parts.append(f"clip=[{self.clip_low:g}, {self.clip_high:g}]")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._fields()}, keys={len(self._hist)})"


def register_updater(name: str) -> Callable[[T], T]:
    """Decorator: register a user updater class under `name` (for `user_type`).

    A subclass of `Updater` must define `rule`; any other class must define
    apply, update, state and load_state. The class is built as `cls(proto)`.
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"register_updater needs a non-empty name string, got {name!r}")

    def add(cls: T) -> T:
        if isinstance(cls, type) and issubclass(cls, Updater) and cls.rule is Updater.rule:
            raise UserError(f"cannot register {cls.__qualname__!r} as updater type {name!r}: "
                            "it lacks the method(s) rule")
        updater_registry.add(name, cls)
        return cls

    return add


def builtin_names() -> list[str]:
    """The built-in updater types, in the order SINGA's docs list them."""
    order = [job_pb2.kSGD, job_pb2.kNesterov, job_pb2.kAdaGrad, job_pb2.kRMSProp,
             job_pb2.kAdaDelta, job_pb2.kAdam, job_pb2.kAdamMax]
    return [job_pb2.UpdaterType.Name(v) for v in order if v in updater_registry]


def create_updater(proto: job_pb2.UpdaterProto) -> Updater:
    """The updater `proto` names; a missing or bad field raises UserError naming it."""
    return updater_registry.create(
        proto, block="updater", noun="updater", default_type=job_pb2.kUserUpdater,
        decorator="register_updater", builtins=builtin_names(),
        example="updater { type: kSGD momentum: 0.9 learning_rate { type: kFixed "
                "base_lr: 0.01 } }")


def _unit_interval(name: str, value: float, closed: bool = False) -> float:
    """Check a decay rate; betas must stay below 1 (bias correction divides by 1 - beta^t)."""
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        raise UserError(f"updater: {name} must be in [0, 1{']' if closed else ')'}, got {value}")
    return value


# --- built-in updaters -------------------------------------------------------

@updater_registry.register(job_pb2.kSGD)
class SGDUpdater(Updater):
    fold_lr = True

    def __init__(self, proto: job_pb2.UpdaterProto):
        super().__init__(proto)
        # Plain SGD keeps no history, so its state (and checkpoint) is empty.
        self.slots = ("history",) if self.momentum > 0 else ()

    def _fused(self, data, grad, lr, wd, grad_scale, hist) -> bool:
        # The same rule in BLAS passes that OpenBLAS spreads over its threads
        # (its saxpby runs on one, and at 2 threads is 2x slower than the
        # sscal + saxpy used here; see runtime.blas):
        #   momentum: h = m*h; h -= lr*gs*grad [+ lr*wd*w]; w += h
        #   plain:    w = (1 - lr*wd)*w - lr*gs*grad
        if (self.clip_high > self.clip_low or data.size <= _BLOCK
                or not blas.usable(data, grad, *hist.arrays.values())):
            return False
        if self.momentum > 0:
            h = hist.arrays["history"]
            blas.sscal(self.momentum, h)
            blas.saxpy(-lr * grad_scale, grad, h)
            if wd > 0:
                blas.saxpy(-lr * wd, data, h)
            blas.saxpy(1.0, h, data)
        else:
            if wd > 0:
                blas.sscal(1.0 - lr * wd, data)
            blas.saxpy(-lr * grad_scale, grad, data)
        return True

    def rule(self, w: np.ndarray, g: np.ndarray, lr: float, hist: History) -> None:
        # g is lr*g here (fold_lr)
        if self.momentum > 0:
            h = hist.arrays["history"]
            h *= self.momentum
            h -= g
            w += h
        else:
            w -= g


@updater_registry.register(job_pb2.kNesterov)
class NesterovUpdater(Updater):
    slots = ("history",)
    fold_lr = True

    def rule(self, w: np.ndarray, g: np.ndarray, lr: float, hist: History) -> None:
        # (1+m)*h' - m*h = m*h' + lr*g, since h' = m*h + lr*g.
        h = hist.arrays["history"]
        h *= self.momentum
        h += g
        w -= g
        np.multiply(h, self.momentum, out=g)
        w -= g


@updater_registry.register(job_pb2.kAdaGrad)
class AdaGradUpdater(Updater):
    slots = ("history",)

    def rule(self, w: np.ndarray, g: np.ndarray, lr: float, hist: History) -> None:
        h, t = hist.arrays["history"], self.scratch(g.shape)
        np.multiply(g, g, out=t)
        h += t
        np.add(h, self.delta, out=t)
        np.sqrt(t, out=t)
        g *= lr
        g /= t
        w -= g


@updater_registry.register(job_pb2.kRMSProp)
class RMSPropUpdater(Updater):
    slots = ("history",)

    def __init__(self, proto: job_pb2.UpdaterProto):
        super().__init__(proto)
        if not (proto.HasField("rmsprop_conf") and proto.rmsprop_conf.HasField("rho")):
            raise UserError("updater { type: kRMSProp } needs rmsprop_conf { rho: ... } "
                            "(e.g. rho: 0.9); missing rmsprop_conf.rho")
        self.rho = _unit_interval("rmsprop_conf.rho", proto.rmsprop_conf.rho, closed=True)

    def rule(self, w: np.ndarray, g: np.ndarray, lr: float, hist: History) -> None:
        h, t = hist.arrays["history"], self.scratch(g.shape)
        np.multiply(g, g, out=t)
        t *= 1.0 - self.rho
        h *= self.rho
        h += t
        np.add(h, self.delta, out=t)
        np.sqrt(t, out=t)
        g *= lr
        g /= t
        w -= g


@updater_registry.register(job_pb2.kAdaDelta)
class AdaDeltaUpdater(Updater):
    slots = ("history", "update")
    clips = False

    def __init__(self, proto: job_pb2.UpdaterProto):
        super().__init__(proto)
        self.rho = _unit_interval("adadelta_conf.rho", proto.adadelta_conf.rho, closed=True)

    def rule(self, w: np.ndarray, g: np.ndarray, lr: float, hist: History) -> None:
        h, u, t = hist.arrays["history"], hist.arrays["update"], self.scratch(g.shape)
        np.multiply(g, g, out=t)
        t *= 1.0 - self.rho
        h *= self.rho
        h += t
        np.add(u, self.delta, out=t)
        np.sqrt(t, out=t)
        g *= t
        np.add(h, self.delta, out=t)
        np.sqrt(t, out=t)
        g /= t                                  # g is now d
        np.multiply(g, g, out=t)
        t *= 1.0 - self.rho
        u *= self.rho
        u += t
        g *= lr
        w -= g


@updater_registry.register(job_pb2.kAdam)
class AdamUpdater(Updater):
    slots = ("m", "v")
    clips = False
    uses_t = True

    def __init__(self, proto: job_pb2.UpdaterProto):
        super().__init__(proto)
        self.beta1 = _unit_interval("adam_conf.beta1", proto.adam_conf.beta1)
        self.beta2 = _unit_interval("adam_conf.beta2", proto.adam_conf.beta2)

    def rule(self, w: np.ndarray, g: np.ndarray, lr: float, hist: History) -> None:
        m, v, t = hist.arrays["m"], hist.arrays["v"], self.scratch(g.shape)
        b1, b2 = self.beta1, self.beta2
        np.multiply(g, 1.0 - b1, out=t)
        m *= b1
        m += t
        np.multiply(g, g, out=t)
        t *= 1.0 - b2
        v *= b2
        v += t
        c1, c2 = 1.0 - b1 ** hist.t, 1.0 - b2 ** hist.t
        np.multiply(v, 1.0 / c2, out=t)         # v_hat
        t += self.delta
        np.sqrt(t, out=t)
        np.multiply(m, lr / c1, out=g)          # lr * m_hat
        g /= t
        w -= g


@updater_registry.register(job_pb2.kAdamMax)
class AdamMaxUpdater(Updater):
    slots = ("m", "u")
    clips = False
    uses_t = True

    def __init__(self, proto: job_pb2.UpdaterProto):
        super().__init__(proto)
        self.beta1 = _unit_interval("adammax_conf.beta1", proto.adammax_conf.beta1)
        self.beta2 = _unit_interval("adammax_conf.beta2", proto.adammax_conf.beta2)

    def rule(self, w: np.ndarray, g: np.ndarray, lr: float, hist: History) -> None:
        m, u, t = hist.arrays["m"], hist.arrays["u"], self.scratch(g.shape)
        b1 = self.beta1
        np.multiply(g, 1.0 - b1, out=t)
        m *= b1
        m += t
        np.abs(g, out=t)
        u *= self.beta2
        np.maximum(u, t, out=u)
        np.add(u, self.delta, out=t)
        np.multiply(m, lr / (1.0 - b1 ** hist.t), out=g)
        g /= t
        w -= g
