"""Pooling layers (kPooling, kCPooling, kCudnnPool): MAX and AVG over
kernel x kernel windows of each channel, with padding, as Caffe does it.

Output size (Caffe): OH = ceil((H + 2*pad - kernel) / stride) + 1, reduced by
one when pad > 0 and the last window would start at or after H + pad. MAX
treats the padding as -inf; AVG divides by the window size clipped to the
padded area (hend = min(hstart + kernel, H + pad)), so padding inside [-pad,
H + pad) counts as zeros and the overhang past it does not count at all.
The backward routes a MAX gradient to the first maximum of each window
(row-major order) and spreads an AVG gradient evenly over the window.

SINGA's kPooling ignores `pad`; here both kPooling and kCPooling honour it.

Computation loops over the kh*kw kernel offsets, each step vectorised over
the whole batch.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.conv_layer import spatial_input, window_geometry
from runtime.neuralnet.layer import Layer, layer_registry
from runtime.neuralnet.neuron_layer import F32, NeuronLayer, as_f32, type_name, wants_grad

MAX, AVG = job_pb2.PoolingProto.MAX, job_pb2.PoolingProto.AVG


def pooled_size(size: int, kernel: int, pad: int, stride: int) -> int:
    """Caffe's pooled output size along one axis."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def avg_pool_sizes(size: int, out: int, kernel: int, pad: int, stride: int) -> np.ndarray:
    """Per output position, the window length clipped to [-pad, size + pad)."""
    start = np.arange(out) * stride - pad
    end = np.minimum(start + kernel, size + pad)
    return (end - start).astype(F32)


@layer_registry.register(job_pb2.kPooling, job_pb2.kCudnnPool)
class PoolingLayer(NeuronLayer):
    """MAX or AVG pooling of an NCHW (or N,H,W) source; output [N, C, OH, OW].

    Conf `pooling_conf`: pool (MAX|AVG), kernel/pad/stride or their _x/_y
    variants (the _x/_y ones win when set). pad must be smaller than kernel.
    """

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        conf = self.proto.pooling_conf
        self.method = conf.pool
        if self.method not in (MAX, AVG):
            raise LayerError(f"{type_name(self)}: pooling_conf.pool {self.method} is not MAX or AVG")
        kh, kw, ph, pw, sh, sw = window_geometry(self, conf, "pooling_conf")
        for axis, k, p in (("y", kh, ph), ("x", kw, pw)):
            if p >= k:
                raise LayerError(f"{type_name(self)}: pad_{axis} {p} must be smaller than "
                                 f"kernel_{axis} {k}")
        self.src_shape = tuple(srclayers[0].shape_for(self))
        n, c, h, w = spatial_input(self, self.src_shape)
        for axis, size, k, p in (("y", h, kh, ph), ("x", w, kw, pw)):
            if k > size + 2 * p:
                what = "height" if axis == "y" else "width"
                raise LayerError(
                    f"{type_name(self)}: kernel_{axis} {k} is larger than the padded input "
                    f"{what} {size + 2 * p} ({what} {size} + 2*pad_{axis} {p})")
        oh, ow = pooled_size(h, kh, ph, sh), pooled_size(w, kw, pw, sw)
        self.dims = (n, c, h, w)
        self.kernel, self.pad, self.stride = (kh, kw), (ph, pw), (sh, sw)
        self.shape = (n, c, oh, ow)
        # The padded frame: big enough for every window and for the input.
        self.frame = (max((oh - 1) * sh + kh, ph + h), max((ow - 1) * sw + kw, pw + w))
        # Without padding or overhang the source itself is the frame.
        self.framed = ph or pw or self.frame != (h, w)
        # With stride >= kernel the windows are disjoint: the backward can assign.
        self.disjoint = sh >= kh and sw >= kw
        if self.method == AVG:
            self.inv_size = 1.0 / np.outer(avg_pool_sizes(h, oh, kh, ph, sh),
                                           avg_pool_sizes(w, ow, kw, pw, sw))

    def _windows(self, a: np.ndarray, i: int, j: int) -> np.ndarray:
        """The [N, C, OH, OW] view of a framed array seen by kernel offset (i, j)."""
        _, _, oh, ow = self.shape
        (sh, sw) = self.stride
        return a[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]

    def _frame(self, x: np.ndarray) -> np.ndarray:
        if not self.framed:
            return x
        n, c, h, w = self.dims
        ph, pw = self.pad
        fill = -np.inf if self.method == MAX else 0.0
        # the border is filled once, when the array is made; the interior each call
        xf = self.buf.get("frame", (n, c, *self.frame), fill=fill)
        xf[:, :, ph:ph + h, pw:pw + w] = x
        return xf

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self._frame(self.src_data(srclayers).reshape(self.dims))
        kh, kw = self.kernel
        y = self.buf.get("y", self.shape)
        if self.method == MAX:
            arg = self.buf.get("arg", self.shape, dtype=np.int32)
            mask = self.buf.get("mask", self.shape, dtype=bool)
            np.copyto(y, self._windows(x, 0, 0))
            arg.fill(0)
            for t in range(1, kh * kw):
                v = self._windows(x, t // kw, t % kw)
                np.greater(v, y, out=mask)  # strict: the first maximum wins ties
                np.copyto(y, v, where=mask)
                np.copyto(arg, t, where=mask)
        else:
            np.copyto(y, self._windows(x, 0, 0))
            for t in range(1, kh * kw):
                y += self._windows(x, t // kw, t % kw)
            y *= self.inv_size
        self.data = y

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        if not wants_grad(src):
            return
        n, c, h, w = self.dims
        ph, pw = self.pad
        kh, kw = self.kernel
        g = as_f32(self.grad).reshape(self.shape)
        gf = self.buf.zeros("gframe", (n, c, *self.frame) if self.framed else self.dims)
        if self.method == MAX:
            arg = self.buf.get("arg", self.shape, dtype=np.int32)
            mask = self.buf.get("mask", self.shape, dtype=bool)
            for t in range(kh * kw):
                np.equal(arg, t, out=mask)
                view = self._windows(gf, t // kw, t % kw)
                if self.disjoint:
                    np.multiply(g, mask, out=view)
                else:
                    view += g * mask
        else:
            gs = self.buf.get("gscaled", self.shape)
            np.multiply(g, self.inv_size, out=gs)
            for t in range(kh * kw):
                view = self._windows(gf, t // kw, t % kw)
                if self.disjoint:
                    np.copyto(view, gs)
                else:
                    view += gs
        if self.framed:
            gx = self.buf.get("gx", self.dims)
            np.copyto(gx, gf[:, :, ph:ph + h, pw:pw + w])
        else:
            gx = gf
        src.set_grad(self, gx.reshape(self.src_shape))


@layer_registry.register(job_pb2.kCPooling)
class CPoolingLayer(PoolingLayer):
    """SINGA's Caffe-style pooling; the same computation as kPooling here."""
