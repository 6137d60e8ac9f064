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

from typing import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.layer import Layer, has, layer_registry
from runtime.neuralnet.neuron_layer import (
    F32, NeuronLayer, as_f32, check_param_count, set_param_grad, type_name, wants_grad)

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

    def setup(self, srclayers: Sequence[Layer]) -> None:
        super().setup(srclayers)
        conf = self.proto.lrn_conf
        self.size = int(conf.local_size)
        if self.size <= 0 or self.size % 2 == 0:
            raise LayerError(f"{type_name(self)}: lrn_conf.local_size must be a positive odd "
                             f"number, got {self.size}")
        if len(self.shape) < 2:
            raise LayerError(f"{type_name(self)}: the source needs a channel axis (axis 1), "
                             f"got shape {self.shape}")
        self.alpha, self.beta, self.knorm = float(conf.alpha), float(conf.beta), float(conf.knorm)
        n, c = self.shape[:2]
        self.dims = (n, c, int(np.prod(self.shape[2:], dtype=np.int64)))

    def _window_sum(self, a: np.ndarray, name: str) -> np.ndarray:
        """Sum over the channel window of a [N, C, S] array (zero padded)."""
        n, c, s = self.dims
        half = self.size // 2
        padded = self.buf.get(name + ".pad", (n, c + 2 * half, s), fill=0)
        padded[:, half:half + c] = a
        out = self.buf.get(name, self.dims)
        np.copyto(out, padded[:, :c])
        for o in range(1, self.size):
            out += padded[:, o:o + c]
        return out

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self.src_data(srclayers).reshape(self.dims)
        sq = self.buf.get("sq", self.dims)
        np.multiply(x, x, out=sq)
        norm = self._window_sum(sq, "norm")
        norm *= self.alpha / self.size
        norm += self.knorm
        scale = self.buf.get("scale", self.dims)
        np.power(norm, -self.beta, out=scale)
        y = self.buf.get("y", self.dims)
        np.multiply(x, scale, out=y)
        self.data = y.reshape(self.shape)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        if not wants_grad(src):
            return
        x = self.src_data(srclayers).reshape(self.dims)
        g = as_f32(self.grad).reshape(self.dims)
        norm, scale = self.buf.get("norm", self.dims), self.buf.get("scale", self.dims)
        y = self.data.reshape(self.dims)
        # dy_c/dx_k = d_ck scale_c - 2 alpha beta / size * x_k * y_c / norm_c
        # for every c whose window holds k (the windows are symmetric)
        t = self.buf.get("t", self.dims)
        np.multiply(g, y, out=t)
        t /= norm
        ts = self._window_sum(t, "tsum")
        gx = self.buf.get("gx", self.dims)
        np.multiply(x, ts, out=gx)
        gx *= -2.0 * self.alpha * self.beta / self.size
        gx += g * scale
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
            pshape = (1, self.shape[1], 1, 1)
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
            self.mean.data *= 1.0 - BN_MOMENTUM
            self.mean.data += (BN_MOMENTUM * mean).astype(F32)
            self.var.data *= 1.0 - BN_MOMENTUM
            self.var.data += (BN_MOMENTUM * unbiased).astype(F32)
        else:
            mean, var = self.mean.data, self.var.data
        self.inv_std = (1.0 / np.sqrt(np.asarray(var, np.float64) + BN_EPSILON)).astype(F32)
        xhat = self.buf.get("xhat", self.shape)
        np.subtract(x, mean.astype(F32), out=xhat)
        xhat *= self.inv_std
        y = self.buf.get("y", self.shape)
        np.multiply(xhat, self.scale.data, out=y)
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
        k = self.scale.data * self.inv_std
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
