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

Pooling is separable, so it runs as two 1-D passes: along the width (one
step per kernel column, on [N, C, H, OW]) and then along the height (one step
per kernel row); each step is one vectorised operation over the whole batch.
For MAX each pass keeps the first argmax along its axis: the height pass
picks the first row holding the window's maximum and the width pass the
first column of that row, which is the first maximum in row-major order.
Fewer, longer memory runs than a loop over the kh*kw offsets.
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
            raise LayerError(f"{type_name(self)}: pooling_conf.pool {self.method} "
                             "is not MAX or AVG")
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
        if max(kh, kw) > 127:  # argmax indices are int8
            raise LayerError(f"{type_name(self)}: kernel {kh}x{kw} is too large (at most 127)")
        if self.method == AVG:
            self.inv_size = 1.0 / np.outer(avg_pool_sizes(h, oh, kh, ph, sh),
                                           avg_pool_sizes(w, ow, kw, pw, sw))

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

    def _passes(self):
        """(name, axis, kernel, stride, outputs) of the width pass, then the height pass."""
        _, _, oh, ow = self.shape
        (kh, kw), (sh, sw) = self.kernel, self.stride
        return ("w", 3, kw, sw, ow), ("h", 2, kh, sh, oh)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self._frame(self.src_data(srclayers).reshape(self.dims))
        n, c = self.dims[:2]
        hf = self.frame[0]
        _, _, oh, ow = self.shape
        mw = self.buf.get("mw", (n, c, hf, ow))  # after the width pass
        y = self.buf.get("y", self.shape)
        for (name, axis, k, s, count), src, out in zip(self._passes(), (x, mw), (mw, y)):
            if self.method == MAX:
                self._max_pass(name, src, out, axis, k, s, count)
            elif k == 1:
                np.copyto(out, _taps(src, axis, 0, s, count))
            else:
                np.add(_taps(src, axis, 0, s, count), _taps(src, axis, 1, s, count), out=out)
                for j in range(2, k):
                    out += _taps(src, axis, j, s, count)
        if self.method == AVG:
            y *= self.inv_size
        self.data = y

    def _max_pass(self, name: str, src: np.ndarray, out: np.ndarray, axis: int, k: int,
                  s: int, count: int) -> None:
        """out = max of the k taps; arg_<name> = index of the first maximum.

        Branch-free: masked copies (copyto where=) are 10x slower on random
        masks. mask_j marks positions where tap j beats all earlier taps, so
        the first maximum is the largest such j.
        """
        arg = self.buf.get("arg" + name, out.shape, dtype=np.int8)
        first = _taps(src, axis, 0, s, count)
        if k == 1:
            np.copyto(out, first)
            arg.fill(0)
            return
        v = _taps(src, axis, 1, s, count)
        np.greater(v, first, out=arg)  # strict: the first maximum wins ties
        np.maximum(first, v, out=out)
        for j in range(2, k):
            v = _taps(src, axis, j, s, count)
            mask = self.buf.get("mask" + name, out.shape, dtype=bool)
            tmp = self.buf.get("tmp" + name, out.shape, dtype=np.int8)
            np.greater(v, out, out=mask)
            np.multiply(mask, np.int8(j), out=tmp)
            np.maximum(arg, tmp, out=arg)
            np.maximum(out, v, out=out)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        if not wants_grad(src):
            return
        n, c, h, w = self.dims
        ph, pw = self.pad
        hf, wf = self.frame
        _, _, oh, ow = self.shape
        g = as_f32(self.grad).reshape(self.shape)
        if self.method == AVG:
            g = np.multiply(g, self.inv_size, out=self.buf.get("gscaled", self.shape))
        gh = self.buf.get("gmw", (n, c, hf, ow))  # the gradient after the width pass
        gf = self.buf.get("gframe", (n, c, hf, wf))
        (_, _, kw, sw, _), (_, _, kh, sh, _) = self._passes()
        self._spread("h", g, gh, 2, kh, sh, oh)
        self._spread("w", gh, gf, 3, kw, sw, ow)
        if self.framed:
            gx = self.buf.get("gx", self.dims)
            np.copyto(gx, gf[:, :, ph:ph + h, pw:pw + w])
        else:
            gx = gf
        src.set_grad(self, gx.reshape(self.src_shape))

    def _spread(self, name: str, g: np.ndarray, dst: np.ndarray, axis: int, k: int, s: int,
                count: int) -> None:
        """The adjoint of one pass: hand g to the taps (MAX: only the argmax tap)."""
        disjoint = s >= k
        if not (s == k and dst.shape[axis] == count * s):
            dst.fill(0)  # unless the taps cover every element exactly once
        if self.method == MAX and k == 2 and disjoint:
            # arg is 0 or 1: tap 1 gets g * arg, tap 0 the rest
            arg = self.buf.get("arg" + name, g.shape, dtype=np.int8)
            np.multiply(g, arg, out=_taps(dst, axis, 1, s, count))
            np.subtract(g, _taps(dst, axis, 1, s, count), out=_taps(dst, axis, 0, s, count))
            return
        mask = self.buf.get("bmask" + name, g.shape, dtype=bool) if self.method == MAX else None
        for j in range(k):
            view = _taps(dst, axis, j, s, count)
            if mask is not None:
                np.equal(self.buf.get("arg" + name, g.shape, dtype=np.int8), j, out=mask)
                if disjoint:
                    np.multiply(g, mask, out=view)
                else:
                    view += g * mask
            elif disjoint:
                np.copyto(view, g)
            else:
                view += g


def _taps(a: np.ndarray, axis: int, j: int, s: int, count: int) -> np.ndarray:
    """The view of `a` that tap j of `count` windows with stride s reads along `axis`."""
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(j, j + s * (count - 1) + 1, s)
    return a[tuple(idx)]


@layer_registry.register(job_pb2.kCPooling)
class CPoolingLayer(PoolingLayer):
    """SINGA's Caffe-style pooling; the same computation as kPooling here."""
