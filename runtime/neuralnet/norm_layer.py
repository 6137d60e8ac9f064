"""Normalisation layers: local response normalisation across channels (kLRN,
kCudnnLRN) and batch normalisation (kBM, kCudnnBM).

BatchNorm params, in order: scale, bias, running mean, running variance,
each `[1, C, 1, 1]` for a 4-D source (`[1, D]` for a 2-D one). The last two
are statistics, not weights: the layer writes them during training forward
passes (running = (1 - BN_MOMENTUM) * running + BN_MOMENTUM * batch, with the
unbiased batch variance), their grad is always 0, and they are marked
`param.trainable = False` so that the net and updaters leave them alone (give
them `lr_scale: 0` and `wd_scale: 0` in a job.conf as well). Initialise them
with `kConstant` 0 (mean) and 1 (variance). We store the variance, not its
inverse.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.conf_check import ConfProblem
from runtime.neuralnet.layer import Layer, allocated, has, layer_registry
from runtime.neuralnet.neuron_layer import (
    F32,
    NeuronLayer,
    as_f32,
    check_param_count,
    set_param_grad,
    type_name,
    wants_grad,
)

#: floats per block of an LRN pass (its temporaries then stay in L2)
LRN_BLOCK_FLOATS = 1 << 16

BN_EPSILON = 1e-5
#: weight of the current batch in the running mean and variance
BN_MOMENTUM = 0.1


# -------------------------------------------------------------------- LRN --
@layer_registry.register(job_pb2.kLRN, job_pb2.kCudnnLRN)
class LRNLayer(NeuronLayer):
    """y = x * norm^(-beta), norm = knorm + alpha/local_size * sum of x^2 over
    the local_size channels centred on each channel (zeros past the edges).

    Conf `lrn_conf`: local_size (odd, > 0), alpha, beta, knorm. The source has
    channels on axis 1 (NCHW, or [N, C] / [N, C, ...]); output has its shape.
    """

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        ls = proto.lrn_conf.local_size
        if ls < 1 or ls % 2 == 0:
            return [ConfProblem("lrn_conf.local_size" if proto.lrn_conf.HasField("local_size")
                                else "lrn_conf",
                                f"lrn_conf.local_size must be a positive odd number (the "
                                f"window is centred on each channel), got {ls}",
                                about="lrn_conf.local_size")]
        return []


    def setup(self, srclayers: Sequence[Layer]) -> None:
        super().setup(srclayers)
        conf = self.proto.lrn_conf
        self.raise_conf_errors()
        self.size = int(conf.local_size)
        if len(self.shape) < 2:
            raise LayerError(f"{type_name(self)}: the source needs a channel axis (axis 1), "
                             f"got shape {self.shape}")
        self.alpha, self.beta, self.knorm = float(conf.alpha), float(conf.beta), float(conf.knorm)
        n, c = self.shape[:2]
        self.dims = (n, c, int(np.prod(self.shape[2:], dtype=np.int64)))

    # Both passes go block by block over the batch (instances are independent),
    # so that a block's temporaries stay in cache between the steps.

    def _blocks(self):
        """Slices of instances, and the [instances, C, S] shape of a block's temporaries."""
        n, c, s = self.dims
        step = max(1, min(n, LRN_BLOCK_FLOATS // (c * s)))
        for i in range(0, n, step):
            yield slice(i, min(n, i + step)), (step, c, s)

    def _temp(self, name: str, shape: tuple[int, int, int], b: slice) -> np.ndarray:
        """A block temporary (the same memory for every block, so it stays in cache)."""
        return self.buf.get(name, shape)[:b.stop - b.start]

    def _window_sum(self, a: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out[:, c] = the sum of a[:, c + o] for o = -size//2 .. size//2 where
        that channel exists, added in that order (as a zero-padded sum is:
        0 + v and v + 0 are v)."""
        c, half = a.shape[1], self.size // 2
        if half == 0:
            np.copyto(out, a)
            return out
        # every channel's first term (channel c - half, or 0 near the edge)
        # and, for c >= half, its second one, in one step
        np.copyto(out[:, :half], a[:, :1])
        if c > half:
            np.add(a[:, :c - half], a[:, 1:c - half + 1], out=out[:, half:])
        for o in range(-half + 2, half + 1):
            lo, hi = max(0, 1 - o), min(c, c - o)
            if lo < hi:
                out[:, lo:hi] += a[:, lo + o:hi + o]
        return out

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self.src_data(srclayers).reshape(self.dims)
        norm, scale = self.buf.get("norm", self.dims), self.buf.get("scale", self.dims)
        y = self.buf.get("y", self.dims)
        for b, shape in self._blocks():
            sq = self._temp("sq", shape, b)
            np.multiply(x[b], x[b], out=sq)
            nb = self._window_sum(sq, norm[b])
            nb *= self.alpha / self.size
            nb += self.knorm
            np.power(nb, -self.beta, out=scale[b])
            np.multiply(x[b], scale[b], out=y[b])
        self.data = y.reshape(self.shape)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        if not wants_grad(src):
            return
        x = self.src_data(srclayers).reshape(self.dims)
        g = as_f32(self.grad).reshape(self.dims)
        norm, scale = self.buf.get("norm", self.dims), self.buf.get("scale", self.dims)
        y = allocated(self.data).reshape(self.dims)
        gx = self.buf.get("gx", self.dims)
        # dy_c/dx_k = d_ck scale_c - 2 alpha beta / size * x_k * y_c / norm_c
        # for every c whose window holds k (the windows are symmetric)
        for b, shape in self._blocks():
            t = self._temp("t", shape, b)
            np.multiply(g[b], y[b], out=t)
            t /= norm[b]
            ts = self._window_sum(t, self._temp("tsum", shape, b))
            gb = gx[b]
            np.multiply(x[b], ts, out=gb)
            gb *= -2.0 * self.alpha * self.beta / self.size
            np.multiply(g[b], scale[b], out=t)
            gb += t
        src.set_grad(self, gx.reshape(self.shape))


# ------------------------------------------------------------- batch norm --
@layer_registry.register(job_pb2.kBM, job_pb2.kCudnnBM)
class BatchNormLayer(NeuronLayer):
    """Batch normalisation over N (and H, W) per channel (per feature for 2-D).

    Train phase: normalise with the batch mean and (biased) variance, and
    update the running statistics. Other phases: normalise with the running
    statistics. y = scale * (x - mean) / sqrt(var + 1e-5) + bias.
    """

    num_params = 4

    def setup(self, srclayers: Sequence[Layer]) -> None:
        super().setup(srclayers)
        if len(self.shape) == 4:
            pshape: tuple[int, ...] = (1, self.shape[1], 1, 1)
            self.axes: tuple[int, ...] = (0, 2, 3)
        elif len(self.shape) == 2:
            pshape = (1, self.shape[1])
            self.axes = (0,)
        else:
            raise LayerError(f"a {type_name(self)} layer needs a 4-D (N, C, H, W) or 2-D (N, D) "
                             f"source, got shape {self.shape}")
        check_param_count(self, (4,), "scale, bias, running mean, running variance")
        self.scale, self.bias, self.mean, self.var = (self.make_param(i, pshape) for i in range(4))
        for p in (self.mean, self.var):
            p.trainable = False
        self.count = int(np.prod([self.shape[a] for a in self.axes], dtype=np.int64))
        self.batch_stats = False

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self.src_data(srclayers)
        self.batch_stats = has(flag, job_pb2.kTrain)
        if self.batch_stats:
            mean = x.mean(axis=self.axes, keepdims=True, dtype=np.float64)
            var = x.var(axis=self.axes, keepdims=True, dtype=np.float64)
            m = self.count
            unbiased = var * (m / (m - 1)) if m > 1 else var
            run_mean, run_var = allocated(self.mean.data), allocated(self.var.data)  # in place
            run_mean *= 1.0 - BN_MOMENTUM
            run_mean += (BN_MOMENTUM * mean).astype(F32)
            run_var *= 1.0 - BN_MOMENTUM
            run_var += (BN_MOMENTUM * unbiased).astype(F32)
        else:
            mean, var = self.mean.data, self.var.data
        self.inv_std = (1.0 / np.sqrt(np.asarray(var, np.float64) + BN_EPSILON)).astype(F32)
        xhat = self.buf.get("xhat", self.shape)
        np.subtract(x, mean.astype(F32), out=xhat)
        xhat *= self.inv_std
        y = self.buf.get("y", self.shape)
        np.multiply(xhat, allocated(self.scale.data), out=y)
        y += self.bias.data
        self.data = y

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        g = as_f32(self.grad).reshape(self.shape)
        xhat = self.buf.get("xhat", self.shape)
        gbias = g.sum(axis=self.axes, keepdims=True)
        gscale = (g * xhat).sum(axis=self.axes, keepdims=True)
        set_param_grad(self.scale, gscale, flag)
        set_param_grad(self.bias, gbias, flag)
        for p in (self.mean, self.var):  # statistics: grad 0 always, even with kAggGrad
            if p.grad is None:
                p.grad = np.zeros(p.shape, F32)
            else:
                p.grad.fill(0)
        if not wants_grad(src):
            return
        gx = self.buf.get("gx", self.shape)
        k = allocated(self.scale.data) * self.inv_std
        if self.batch_stats:
            # d/dx of the batch statistics: subtract the mean of g and the
            # part of g along xhat, per channel
            np.multiply(xhat, gscale / self.count, out=gx)
            gx += gbias / self.count
            np.subtract(g, gx, out=gx)
            gx *= k
        else:
            np.multiply(g, k, out=gx)
        src.set_grad(self, gx)
